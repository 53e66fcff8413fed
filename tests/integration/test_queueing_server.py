"""Queueing behaviour of a real ``genserve serve`` process: batching across callers, queue full,
deadlines before compute, cancellation, priorities, metrics and bad configuration.

``ddpm-tiny`` served with one slot (``--max-batch-size 1``) is held by one long request while
the test queues others behind it; the Prometheus endpoint tells the test when they are
queued and whether they ever reached the engine."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from genserve.client import GenserveClient
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc

DDPM, DCGAN = "ddpm-tiny", "dcgan-tiny"
LONG_STEPS = 1000  # several seconds on ddpm-tiny: the instance is busy for the whole test


def metric(server, name: str, model: str) -> float:
    """Current value of a per-model sample, 0.0 if it has none yet."""
    match = re.search(rf'^{name}{{model="{model}"}} (\S+)$', server.scrape_metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_metric(server, name: str, model: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(server, name, model) == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name}{{model={model}}} never reached {value}; now {metric(server, name, model)}")


class Calls:
    """Generate calls as futures on one channel."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.stub = genserve_pb2_grpc.GenerationServiceStub(self.channel)

    def start(self, model: str, n: int = 1, deadline: float = 120.0, **fields) -> grpc.Future:
        """``deadline``: the gRPC call's, seconds; ``fields`` of GenerateRequest (``timeout`` = timeout_ms / 1000)."""
        msg = convert.generate_request_to_proto(GenerateRequest(model, n, **fields), convert.ImageEncoding.RAW)
        return self.stub.Generate.future(msg, timeout=deadline)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def busy_ddpm(start_server):
    """A server whose ddpm-tiny has one slot (``--max-batch-size 1``), busy with a long request;
    yields (server, calls, busy call). Later requests queue behind it."""

    def start(*args: str, models: Path | None = None):
        args = ("--max-batch-size", "1", *args)
        server = start_server(*args, metrics=True, **({"models": models} if models else {})).wait_until_serving()
        calls = Calls(server.target)
        busy = calls.start(DDPM, 1, seed=0, steps=LONG_STEPS)
        wait_metric(server, "genserve_pending_requests", DDPM, 1.0)
        wait_metric(server, "genserve_queued_requests", DDPM, 0.0)  # it is running, not waiting
        opened.append((calls, busy))
        return server, calls, busy

    opened: list = []
    yield start
    for calls, busy in opened:
        busy.cancel()
        calls.close()


def test_concurrent_callers_share_batches_and_each_gets_exactly_its_own_images(start_server):
    server = start_server("--max-batch-size", "16", metrics=True).wait_until_serving()
    with GenserveClient(server.target, timeout=60) as client:
        alone = {seed: client.generate(DCGAN, n, seed=seed) for seed, n in ((1, 5), (2, 16), (3, 1), (4, 9))}
    with concurrent.futures.ThreadPoolExecutor(16) as pool, GenserveClient(server.target, timeout=60) as client:
        jobs = [
            (seed, pool.submit(client.generate, DCGAN, len(images), seed=seed))
            for _ in range(8)
            for seed, images in alone.items()
        ]
        for seed, job in jobs:
            np.testing.assert_array_equal(job.result(), alone[seed])
    text = server.scrape_metrics()
    batches = float(re.search(rf'genserve_batch_size_count{{model="{DCGAN}"}} (\S+)', text).group(1))
    images = float(re.search(rf'genserve_batch_size_sum{{model="{DCGAN}"}} (\S+)', text).group(1))
    assert images == 8 * 31 + 31
    assert batches < images, "no engine call held more than one image"


def test_a_full_queue_rejects_at_once_with_resource_exhausted(busy_ddpm):
    server, calls, busy = busy_ddpm("--max-queue-size", "1")
    queued = calls.start(DDPM, 1, seed=1, steps=10)
    wait_metric(server, "genserve_queued_requests", DDPM, 1.0)
    started = time.monotonic()
    rejected = calls.start(DDPM, 1, seed=2, steps=10)
    with pytest.raises(grpc.RpcError) as error:
        rejected.result(timeout=30)
    assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 requests queued, its limit" in error.value.details()
    assert time.monotonic() - started < 5.0, "the rejection waited for the queue"
    assert not queued.done()


def test_a_request_whose_timeout_passes_in_the_queue_gets_deadline_exceeded_and_never_runs(busy_ddpm):
    server, calls, busy = busy_ddpm()
    expired = calls.start(DDPM, 1, seed=1, steps=10, timeout=0.2)  # the request's own timeout_ms
    with pytest.raises(grpc.RpcError) as error:
        expired.result(timeout=30)
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "it was not run" in error.value.details()
    busy.cancel()
    wait_metric(server, "genserve_pending_requests", DDPM, 0.0)
    # A request's queue time is observed when it starts: only the long request ever started.
    assert metric(server, "genserve_queue_duration_seconds_count", DDPM) == 1.0
    assert 'code="DEADLINE_EXCEEDED"' in server.scrape_metrics()


def test_a_call_whose_grpc_deadline_passes_in_the_queue_leaves_it_and_never_runs(busy_ddpm):
    server, calls, busy = busy_ddpm()
    short = calls.start(DDPM, 1, seed=1, steps=10, deadline=0.3)
    with pytest.raises(grpc.RpcError) as error:
        short.result(timeout=30)
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_metric(server, "genserve_queued_requests", DDPM, 0.0)
    after = calls.start(DDPM, 1, seed=2, steps=2)
    busy.cancel()
    assert after.result(timeout=60).model == DDPM
    # Requests that started: the long one and `after`; `short` never did.
    assert metric(server, "genserve_queue_duration_seconds_count", DDPM) == 2.0


def test_a_cancelled_call_leaves_the_queue_at_once(busy_ddpm):
    server, calls, busy = busy_ddpm()
    waiting = calls.start(DDPM, 1, seed=1, steps=10)
    wait_metric(server, "genserve_queued_requests", DDPM, 1.0)
    waiting.cancel()
    wait_metric(server, "genserve_queued_requests", DDPM, 0.0, timeout=5.0)
    wait_metric(server, "genserve_pending_requests", DDPM, 1.0, timeout=5.0)  # the busy one only
    assert 'code="CANCELLED"' in server.scrape_metrics()


def test_higher_priority_requests_overtake_lower_ones_in_the_queue(busy_ddpm, tmp_path, tiny_models):
    config = tmp_path / "genserve.toml"
    config.write_text(f"[models.{DDPM}]\npriority_levels = 2\ndefault_priority = 2\n")
    server, calls, busy = busy_ddpm("--config", str(config))
    finished: list[str] = []
    low = calls.start(DDPM, 1, seed=1, steps=20)
    wait_metric(server, "genserve_queued_requests", DDPM, 1.0)
    high = calls.start(DDPM, 1, seed=2, steps=20, priority=1)
    wait_metric(server, "genserve_queued_requests", DDPM, 2.0)
    low.add_done_callback(lambda _: finished.append("low"))
    high.add_done_callback(lambda _: finished.append("high"))
    busy.cancel()
    low.result(timeout=60)
    high.result(timeout=60)
    assert finished == ["high", "low"]
    bad = calls.start(DDPM, 1, seed=3, steps=2, priority=3)
    with pytest.raises(grpc.RpcError) as error:
        bad.result(timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "priority must be in [0, 2]" in error.value.details()


def test_metrics_expose_requests_by_outcome_and_queue_compute_batch_and_pending(server, client):
    client.generate(DCGAN, 3, seed=1)
    with pytest.raises(grpc.RpcError):
        client.generate("no-such-model", 1)
    with pytest.raises(grpc.RpcError):
        client.generate(DCGAN, 0)
    text = server.scrape_metrics()
    for name in (
        "genserve_requests_total",
        "genserve_request_duration_seconds_bucket",
        "genserve_queue_duration_seconds_bucket",
        "genserve_compute_duration_seconds_bucket",
        "genserve_batch_size_bucket",
        "genserve_computed_units_total",
        "genserve_pending_requests",
        "genserve_queued_requests",
    ):
        assert f"{name}{{" in text, f"{name} missing from /metrics"
    assert re.search(rf'genserve_requests_total{{code="OK",model="{DCGAN}"}} [1-9]', text)
    assert re.search(r'genserve_requests_total{code="NOT_FOUND",model="_unknown"} [1-9]', text)
    assert re.search(rf'genserve_requests_total{{code="INVALID_ARGUMENT",model="{DCGAN}"}} [1-9]', text)


def test_an_invalid_config_file_stops_the_server_naming_the_key(start_server, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model_defaults]\nmax_queue_delay_ms = -1\n[models.x]\nmax_batch = 2\n")
    server = start_server("--config", str(config))
    assert server.wait(timeout=60) == 2
    assert "model_defaults.max_queue_delay_ms: expected a number >= 0, got -1" in server.log
    assert "models.x.max_batch: unknown key" in server.log


def test_settings_that_do_not_fit_the_models_stop_the_server(start_server, tmp_path):
    config = tmp_path / "genserve.toml"
    config.write_text("[models.no-such-model]\ninstances = 2\n")
    server = start_server("--config", str(config), "--max-batch-size", "65")
    assert server.wait(timeout=60) == 1
    assert "models.no-such-model: no such model" in server.log
    assert f"--max-batch-size: 65 exceeds the engine limit of model {DCGAN}, 64" in server.log


def test_a_burst_of_thousands_of_calls_gets_only_ok_or_resource_exhausted(start_server):
    """gRPC core cancels calls beyond its pending-call limit before any handler runs (1,000 by
    default); the server raises that limit so a burst reaches the bounded model queue instead."""
    import asyncio
    import collections

    server = start_server("--max-queue-size", "64", metrics=True).wait_until_serving()
    msg = convert.generate_request_to_proto(GenerateRequest(DCGAN, 1), convert.ImageEncoding.RAW)

    async def burst(n: int) -> collections.Counter:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = genserve_pb2_grpc.GenerationServiceStub(channel)

            async def one() -> str:
                try:
                    await stub.Generate(msg, timeout=120)
                    return "OK"
                except grpc.aio.AioRpcError as err:
                    return err.code().name

            return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))

    counts = asyncio.run(burst(2500))
    assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"}, counts
    assert counts["OK"] >= 64
    text = server.scrape_metrics()
    assert f'genserve_requests_total{{code="OK",model="{DCGAN}"}} {float(counts["OK"])}' in text
