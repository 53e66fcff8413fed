"""genserve replicas behind a real HAProxy (deploy/local.py), loaded by the real ``genserve bench load``:
per-call balancing, the hand-built gRPC health check on both transports, a rolling restart, a killed
replica and one added at runtime. Loopback only; every process is stopped by the fixtures."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.haproxy import healthcheck
from deploy.local import HOST, LocalDeployment, free_port, haproxy_version
from genserve.serving import convert
from genserve.serving.server import GenserveServer, ServerConfig
from tests.integration.servers import GENSERVE

needs_haproxy = pytest.mark.skipif(
    haproxy_version() is None,
    reason="no haproxy on PATH (Debian: apt-get install haproxy; .ci/run installs it when it runs as root)",
)
DCGAN, DDPM, STEPS = "dcgan-tiny", "ddpm-tiny", 20
DRAIN_DELAY = 2.0  # s: well over the check's worst detection time (inter + fastinter + a check)
# No --max-connection-age behind HAProxy: it balances each call, so replicas need not end
# connections to be rebalanced, and HAProxy 2.6 now and then ends a call it was relaying without
# its trailers when a replica closes a connection at its age limit (the client sees UNKNOWN "Stream
# removed"; about 1 call in 2,000 with a 3 s age, on both transports). A replica added is sent calls
# as soon as its check passes.
MAX_CONNECTION_AGE = 0.0
SERVE_ARGS = ("--drain-delay", str(DRAIN_DELAY), "--grace-period", "10")
DOWN_WITHIN = 5.0  # s from SIGKILL to HAProxy marking the replica DOWN


# --- the check's bytes against a real server, without HAProxy -------------------------------------


def test_health_check_bytes_tell_serving_from_not_serving(tiny_models: Path, frontend: str):
    """The bytes HAProxy sends get an answer from both transports, which the config's two expect
    rules read as a health answer, and as SERVING only when the server is SERVING."""

    async def scenario() -> None:
        server = GenserveServer(ServerConfig(models_dir=tiny_models, host=HOST, port=0, frontend=frontend))
        port = await server.start()  # health NOT_SERVING until models are loaded; none are here
        try:
            for serving in (False, True):
                await server.health.set("", convert.health_status(serving=serving))
                received = await asyncio.to_thread(healthcheck.exchange, HOST, port, 5.0)
                assert re.search(healthcheck.expect_any_answer(), received.hex()), received.hex()
                assert (bytes.fromhex(healthcheck.expect_serving()) in received) is serving, received.hex()
                expected = healthcheck.SERVING if serving else healthcheck.NOT_SERVING
                assert await asyncio.to_thread(healthcheck.probe, HOST, port) == expected
        finally:
            await server.stop(grace=0)

    asyncio.run(scenario())


def test_health_check_of_a_closed_port_is_no_answer():
    assert healthcheck.probe(HOST, free_port(), timeout=1.0) is None


def test_health_check_frames_are_well_formed():
    """Preface, then frames whose 24-bit lengths add up to the rest: SETTINGS, HEADERS, DATA."""
    data = healthcheck.health_check_request()
    assert data.startswith(healthcheck.PREFACE)
    rest, kinds = data[len(healthcheck.PREFACE) :], []
    while rest:
        length = int.from_bytes(rest[:3], "big")
        kinds.append((rest[3], rest[4], int.from_bytes(rest[5:9], "big")))
        rest = rest[9 + length :]
    assert kinds == [(0x4, 0, 0), (0x1, 0x4, 1), (0x0, 0x1, 1)]
    assert b"/grpc.health.v1.Health/Check" in data and b":authority" in data


# --- through HAProxy ---------------------------------------------------------------------------------


class Load:
    """``genserve bench load`` on the balancer, as a subprocess, every request counted (no warmup)."""

    def __init__(self, target: str, model: str, duration: float, out: Path, concurrency: int = 4):
        self.out = out
        steps = ["--steps", str(STEPS)] if model == DDPM else []
        cmd = [str(GENSERVE), "bench", "load", "--server", target, "--model", model, *steps]
        cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "0", "--json", str(out)]
        self.ends_at = time.monotonic() + duration
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def report(self, timeout: float = 60) -> dict:
        output, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, output
        return json.loads(self.out.read_text())


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., Load]]:
    started: list[Load] = []

    def start(target: str, model: str, duration: float, concurrency: int = 4) -> Load:
        started.append(Load(target, model, duration, tmp_path / f"load-{len(started)}.json", concurrency))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


@pytest.fixture
def deployment(tiny_models: Path, tmp_path: Path) -> Iterator[LocalDeployment]:
    """Two replicas of the default transport behind HAProxy; the logs stay in tmp_path/deploy."""
    with LocalDeployment(tiny_models, 2, serve_args=SERVE_ARGS, workdir=tmp_path / "deploy") as running:
        yield running


def failures(report: dict) -> int:
    return report["requests"] - report["status_counts"].get("OK", 0)


@needs_haproxy
def test_each_call_is_balanced_so_both_replicas_get_35_to_65_percent(deployment: LocalDeployment, load):
    """One model's load at a time. leastconn evens out the calls in flight of all models together, so
    under a mixed load one model's split follows the other's: four slow diffusion calls at 3 / 1 with
    the fast GAN calls filling the other replica (4 in flight on each) is as even to it as 2 / 2, and
    the GAN's split is then near 1 : 3 although every call went where it should."""
    reports = {model: load(deployment.target, model, duration=4.0).report() for model in (DCGAN, DDPM)}
    for model, report in reports.items():
        per_replica = deployment.requests_per_replica(model)
        shares = {name: n / sum(per_replica.values()) for name, n in per_replica.items()}
        assert failures(report) == 0, report["status_counts"]
        assert sum(per_replica.values()) >= report["requests"], (per_replica, report["requests"])
        assert all(0.35 <= share <= 0.65 for share in shares.values()), f"{model}: {per_replica}"
        print(f"{model}: {per_replica}, counts per status {report['status_counts']}")


@needs_haproxy
def test_rolling_restart_under_load_fails_no_call(deployment: LocalDeployment, load):
    """Each replica, in turn, reports NOT_SERVING at SIGTERM and keeps answering for its drain delay:
    HAProxy takes it out before it refuses anything, so no call fails and none needs a redispatch."""
    running = [load(deployment.target, DDPM, duration=18.0), load(deployment.target, DCGAN, 18.0, concurrency=2)]
    time.sleep(1.0)
    phases = deployment.rolling_restart()
    finished_under_load = time.monotonic() < min(r.ends_at for r in running)
    reports = [r.report() for r in running]
    counters = deployment.backend_counters()
    counts = {r["model"]: r["status_counts"] for r in reports}
    assert finished_under_load, f"the load ended before the restart did: {phases}"
    assert all(failures(r) == 0 for r in reports), f"counts per status: {counts}"
    assert all(p["out"] < p["exit"] for p in phases), f"a replica exited while HAProxy still had it: {phases}"
    assert counters["redispatches"] == counters["retries"] == 0, f"{counters}, counts per status: {counts}"
    print(f"rolling restart {phases}: counts per status {counts}, HAProxy {counters}")


@needs_haproxy
def test_killed_replica_is_down_within_5_s_and_its_calls_are_retried(deployment: LocalDeployment, load):
    running = load(deployment.target, DDPM, duration=8.0)
    time.sleep(2.0)
    held = deployment.server_states()["r0"].current  # calls in flight on r0 just before the kill
    killed_at = deployment.kill(0)
    detection = deployment.wait_for_state("r0", up=False, timeout=DOWN_WITHIN + 5) - killed_at
    state = deployment.server_states()["r0"]
    report = running.report()
    counters = deployment.backend_counters()
    what = (
        f"held {held} calls; HAProxy retried {counters['retries']} and redispatched {counters['redispatches']}; "
        f"counts per status: {report['status_counts']}; DOWN after {detection:.2f} s ({state.check_desc})"
    )
    assert state.status == "DOWN", what
    assert detection < DOWN_WITHIN, what
    assert failures(report) <= max(held, 0) and failures(report) == 0, what
    print(what)


@needs_haproxy
def test_added_replica_gets_calls_within_max_connection_age_plus_5_s(deployment: LocalDeployment, load):
    running = load(deployment.target, DDPM, duration=8.0)
    time.sleep(1.5)
    replica = deployment.add_replica()
    added_at = time.monotonic()
    while replica.requests(DDPM) == 0 and time.monotonic() - added_at < MAX_CONNECTION_AGE + 5:
        time.sleep(0.1)
    waited = time.monotonic() - added_at
    report = running.report()
    per_replica = deployment.requests_per_replica(DDPM)
    assert replica.requests(DDPM) > 0, f"no call reached {replica.name} in {waited:.1f} s: {per_replica}"
    assert waited < MAX_CONNECTION_AGE + 5, per_replica
    assert failures(report) == 0, report["status_counts"]
    print(f"{replica.name}: first call {waited:.2f} s after UP: {per_replica}, {report['status_counts']}")


@needs_haproxy
def test_haproxy_takes_a_draining_replica_out_while_it_still_runs(tiny_models: Path, tmp_path: Path, frontend: str):
    """The check reads NOT_SERVING on either transport: at SIGTERM the replica is out (a layer-7
    answer, not a refused connection) before its drain delay ends, and it then exits 0."""
    args = ("--frontend", frontend, "--drain-delay", str(DRAIN_DELAY))
    with LocalDeployment(tiny_models, 1, serve_args=args, workdir=tmp_path / "deploy") as deployment:
        replica = deployment.replicas[0]
        replica.signal(signal.SIGTERM)
        signalled = time.monotonic()
        out_after = deployment.wait_for_state("r0", up=False, timeout=DRAIN_DELAY + 5) - signalled
        state = deployment.server_states()["r0"]
        assert replica.running, f"exited before HAProxy saw it NOT_SERVING: {state}"
        assert state.check == "L7RSP" and "not SERVING" in state.check_desc, state
        assert out_after < DRAIN_DELAY, state
        assert replica.wait() == 0
