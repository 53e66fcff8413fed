"""Start-up, model-loading failures and graceful shutdown of ``genserve serve`` processes."""

from __future__ import annotations

import itertools
import queue
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2_grpc

from genserve.client import GenserveClient
from genserve.serving import convert
from tests.integration.test_kserve import seed_input

DDPM = "ddpm-tiny"


class CallInThread:
    """A Generate call running in a thread; ``result()`` returns its images or raises its error."""

    def __init__(self, target: str, **request):
        self._outcome: dict = {}
        self._thread = threading.Thread(target=self._run, args=(target, request), daemon=True)
        self._thread.start()

    def _run(self, target: str, request: dict) -> None:
        try:
            with GenserveClient(target, timeout=120) as client:
                self._outcome["images"] = client.generate(**request)
        except Exception as exc:
            self._outcome["error"] = exc

    def result(self, timeout: float = 60):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["images"]


def _wait_for_metric(server, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in server.scrape_metrics():
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared in the metrics:\n{server.scrape_metrics()}")


def test_sigterm_reports_not_serving_refuses_new_calls_and_lets_running_and_queued_calls_finish(start_server, frontend):
    grace = 30.0
    # Two diffusion slots, both taken by the first call, so the second one queues.
    args = ("--frontend", frontend, "--grace-period", str(grace), "--max-batch-size", "2")
    server = start_server(*args, metrics=True, verbose=True)
    server.wait_until_serving()
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(convert.health_check_request(""), timeout=60)
        assert convert.health_status_name(next(watch)) == "SERVING"

        stream_client = triton.InferenceServerClient(server.target)
        answers: queue.Queue = queue.Queue()
        stream_client.start_stream(callback=lambda result, error: answers.put((result, error)))
        stream_client.async_stream_infer("dcgan-tiny", [seed_input([1])], request_id="before")
        assert answers.get(timeout=60)[1] is None

        call = CallInThread(server.target, model=DDPM, num_images=2, seed=3, steps=500)
        server.wait_for_line(rf"model={DDPM} running batch")
        queued = CallInThread(server.target, model=DDPM, num_images=1, seed=4, steps=100)  # waits for the first
        _wait_for_metric(server, f'genserve_queued_requests{{model="{DDPM}"}} 1.0')
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        assert convert.health_status_name(next(watch)) == "NOT_SERVING"
        watch.cancel()  # a watch is a call in flight too: it would hold the drain to the end of the grace period
        server.wait_for_line("draining")
        # Refused by the server itself, while the port stays open for the calls in flight: a status
        # clients retry elsewhere, not a call cancelled by gRPC core's shutdown.
        with GenserveClient(server.target, timeout=30) as late, pytest.raises(grpc.RpcError) as refused:
            late.generate("dcgan-tiny", 1)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()
        with triton.InferenceServerClient(server.target) as kserve:
            assert kserve.is_server_live() and not kserve.is_server_ready()
            assert not kserve.is_model_ready("dcgan-tiny")
        stream_client.async_stream_infer("dcgan-tiny", [seed_input([2])], request_id="after")
        result, error = answers.get(timeout=60)
        assert result is None and "shutting down" in error.message()  # an open stream takes no new work either
        stream_client.stop_stream()  # an open stream is a call in flight: it would hold the drain
        stream_client.close()

        code = server.wait(timeout=grace)
    assert code == 0, server.log
    assert time.monotonic() - sent < grace
    assert call.result().shape == (2, 28, 28, 1)
    assert queued.result().shape == (1, 28, 28, 1)
    log = server.log
    assert log.index("received SIGTERM") < log.index(f"Generate OK model={DDPM}"), "the call ended before SIGTERM"


def test_sigterm_exits_at_the_end_of_the_grace_period_when_a_call_outlasts_it(start_server, frontend):
    grace = 1.0
    server = start_server("--frontend", frontend, "--grace-period", str(grace), verbose=True).wait_until_serving()
    call = CallInThread(server.target, model=DDPM, num_images=8, seed=3, steps=1000)  # tens of seconds
    server.wait_for_line(rf"model={DDPM} running batch")
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0, server.log
    assert time.monotonic() - sent < grace + 5.0
    with pytest.raises(grpc.RpcError) as cut:
        call.result()
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_sigint_stops_an_idle_server_with_exit_code_zero(start_server, frontend):
    server = start_server("--frontend", frontend).wait_until_serving()
    server.proc.send_signal(signal.SIGINT)
    assert server.wait(timeout=15) == 0, server.log


def test_a_broken_model_folder_stops_the_server_with_the_reason(start_server, tiny_models: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / DDPM / "model.onnx").unlink()
    server = start_server(models=models)
    assert server.wait(timeout=60) == 1
    assert "failed to load the models" in server.log
    assert "model.onnx not found" in server.log
    assert "serving 2 models" not in server.log


def test_an_empty_model_repository_stops_the_server(start_server, tmp_path: Path):
    server = start_server(models=tmp_path)
    assert server.wait(timeout=60) == 1
    assert "no model folders" in server.log


def test_a_port_already_in_use_stops_the_server_with_the_reason(start_server, server, frontend):
    second = start_server("--frontend", frontend, "--port", str(server.port))  # the last --port wins
    assert second.wait(timeout=60) == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in second.log


def test_the_drain_delay_reports_not_serving_and_still_takes_calls_until_it_ends(start_server, frontend):
    args = ("--frontend", frontend, "--drain-delay", "3", "--grace-period", "120")
    server = start_server(*args, verbose=True).wait_until_serving()
    with GenserveClient(server.target, timeout=30) as client:
        # 8 images of 1000 steps hold the drain open well past the delay, even on a fast machine
        long_call = CallInThread(server.target, model=DDPM, num_images=8, seed=3, steps=1000)
        server.wait_for_line(rf"model={DDPM} running batch")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_line("NOT_SERVING; taking calls 3.0 s more")
        assert client.health() == "NOT_SERVING"  # balancers take it out now...
        assert client.generate("dcgan-tiny", 1, seed=1).shape == (1, 28, 28, 1)  # ...and calls sent meanwhile succeed
        server.wait_for_line("draining")
        with pytest.raises(grpc.RpcError) as refused:  # retried by the client, refused every time
            client.generate("dcgan-tiny", 1, seed=2)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert long_call.result(timeout=120).shape == (8, 28, 28, 1)
    assert server.wait(timeout=30) == 0


def test_max_connection_age_closes_connections_without_failing_calls(start_server, frontend):
    args = ("--frontend", frontend, "--max-connection-age", "0.5", "--max-connection-age-grace", "5")
    server = start_server(*args).wait_until_serving()
    states: list[grpc.ChannelConnectivity] = []
    with GenserveClient(server.target, timeout=30) as client:
        client._channel.subscribe(states.append)
        end, ok = time.monotonic() + 3, 0
        while time.monotonic() < end:
            ok += client.generate("dcgan-tiny", 1, seed=ok).shape[0]  # any failure raises
        client._channel.unsubscribe(states.append)
    # GOAWAY at the age limit: the channel goes idle and reconnects (where a balancer would pick anew).
    reconnects = sum(
        1
        for a, b in itertools.pairwise(states)
        if (a, b) == (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE)
    )
    assert reconnects >= 2, states
    assert ok > 0
