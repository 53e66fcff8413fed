"""Per-request traces (--trace-file): a diffusion request under load shows its queue wait, each
step with the batch it shared, its serialization and its send, as Perfetto will read them."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc

from genserve.client import GenserveClient
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.tracing import read_trace_file

DDPM, STEPS = "ddpm-tiny", 20


def test_a_traced_diffusion_request_shows_its_queue_each_step_with_its_batch_and_its_send(
    start_server, frontend, tmp_path: Path
):
    trace_file = tmp_path / "trace.json"
    server = start_server("--frontend", frontend, "--trace-file", str(trace_file)).wait_until_serving()
    with grpc.insecure_channel(server.target) as channel, concurrent.futures.ThreadPoolExecutor(4) as pool:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)

        def call(i: int) -> None:
            request = convert.generate_request_to_proto(GenerateRequest(DDPM, 1, seed=i, steps=STEPS))
            stub.Generate(request, timeout=60, metadata=[("x-request-id", f"load-{i}")])

        list(pool.map(call, range(12)))  # under load: requests share steps
    with GenserveClient(server.target) as client:
        client.generate("dcgan-tiny", 2, seed=1)
    server.stop()  # the trace file is complete (closed) once the server has stopped
    events = read_trace_file(trace_file)
    calls = {e["args"]["genserve.request_id"]: e for e in events if e.get("cat") == "call"}
    assert {f"load-{i}" for i in range(12)} <= calls.keys()
    shared = 0
    for i in range(12):
        call = calls[f"load-{i}"]
        stages = sorted(
            (e for e in events if e.get("tid") == call["tid"] and e.get("cat") == "stage"), key=lambda e: e["ts"]
        )
        names = [e["name"] for e in stages]
        assert names[0] == "queue" and names[-2:] == ["serialize", "send"], names
        steps = [e for e in stages if e["name"] == "step"]
        assert [e["args"]["step"] for e in steps] == list(range(STEPS))
        assert all(e["args"]["batch_size"] >= 1 and "batch" in e["args"] for e in steps)
        shared += any(e["args"]["requests"] > 1 for e in steps)
        for stage in stages:  # every stage lies inside the call's span
            assert call["ts"] - 1 <= stage["ts"] and stage["ts"] + stage["dur"] <= call["ts"] + call["dur"] + 1
        assert call["args"]["genserve.model"] == DDPM and call["args"]["rpc.grpc.status_code"] == "OK"
    assert shared >= 6, "concurrent requests should share steps"
    gan = [e for e in events if e.get("cat") == "call" and e["args"]["genserve.model"] == "dcgan-tiny"]
    assert len(gan) == 1
    gan_stages = [e["name"] for e in events if e.get("tid") == gan[0]["tid"] and e.get("cat") == "stage"]
    assert sorted(gan_stages) == ["engine", "queue", "send", "serialize"]


def test_tracing_samples_the_asked_fraction_of_calls(start_server, tmp_path: Path):
    trace_file = tmp_path / "trace.json"
    server = start_server("--trace-file", str(trace_file), "--trace-rate", "0.25").wait_until_serving()
    with GenserveClient(server.target) as client:
        for i in range(200):
            client.generate("dcgan-tiny", 1, seed=i)
    server.stop()
    traced = sum(1 for e in read_trace_file(trace_file) if e.get("cat") == "call")
    assert 25 <= traced <= 75, traced  # 50 expected; binomial sd ~6
