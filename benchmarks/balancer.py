"""genserve behind HAProxy (deploy/local.py): the four scenarios of tests/integration/test_balancer.py
with longer loads on the bundled models, loaded by the real ``genserve bench load``.

    python -m benchmarks.balancer [--duration 24] [--concurrency 4]

1. balance: dcgan-mnist and ddpm-mnist (20 steps) at once on two replicas; each replica's share.
2. rolling: a rolling restart of both replicas under load; counts per status, HAProxy's retries.
3. kill: SIGKILL one replica under load; seconds until HAProxy has it DOWN, failed calls.
4. add: a third replica added through HAProxy's runtime API under load; seconds to its first call.

Writes a new benchmarks/results/runs/<date>-balancer[-k]/ with balancer.json (counts per status,
shares, times, HAProxy's counters, the environment) and the rendered haproxy.cfg and its logs.
The replicas serve a repository of just the two models (links to models/), so they start quickly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from deploy.local import GENSERVE, LocalDeployment, haproxy_version

DCGAN, DDPM, STEPS = "dcgan-mnist", "ddpm-mnist", 20
MODELS = report.ROOT / "models"
SERVE_ARGS = (*("--drain-delay", "2", "--grace-period", "30"),)


class Load:
    """``genserve bench load`` on the balancer as a subprocess; every request counted (no warmup)."""

    def __init__(self, target: str, model: str, duration: float, concurrency: int, out: Path):
        self.out = out
        steps = ["--steps", str(STEPS)] if model == DDPM else []
        cmd = [str(GENSERVE), "bench", "load", "--server", target, "--model", model, *steps, "--warmup", "0"]
        cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--json", str(out)]
        self.ends_at = time.monotonic() + duration
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict[str, Any]:
        output, _ = self.proc.communicate(timeout=600)
        if self.proc.returncode != 0:
            raise RuntimeError(f"bench load failed:\n{output}")
        full = json.loads(self.out.read_text())
        keys = ("model", "concurrency", "duration", "requests", "throughput", "latency_p50", "latency_p99")
        return {**{k: full[k] for k in keys}, "status_counts": full["status_counts"]}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: round(n / total, 4) if total else 0.0 for name, n in counts.items()}


def scenario(name: str, models: Path, work: Path, run: Path, replicas: int, body) -> dict[str, Any]:
    """A fresh deployment for ``body(deployment, loads)``; its HAProxy log is kept in ``run``."""
    workdir = work / name
    loads: list[Load] = []

    def load(model: str, duration: float, concurrency: int) -> Load:
        loads.append(Load(deployment.target, model, duration, concurrency, workdir / f"load-{len(loads)}.json"))
        return loads[-1]

    deployment = LocalDeployment(models, replicas, serve_args=SERVE_ARGS, workdir=workdir)
    try:
        deployment.start()
        result = body(deployment, load)
        result["haproxy"] = deployment.backend_counters()
        return result
    finally:
        for running in loads:
            running.kill()
        deployment.stop()
        if deployment.haproxy_log.exists():
            shutil.copy(deployment.haproxy_log, run / f"haproxy-{name}.log")
        if deployment.config_path.exists() and not (run / "haproxy.cfg").exists():
            shutil.copy(deployment.config_path, run / "haproxy.cfg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=24.0, help="seconds of load per scenario (default 24)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per load (default 4)")
    args = parser.parse_args()
    version = haproxy_version()
    if version is None:
        raise SystemExit("no haproxy on PATH (Debian: apt-get install haproxy)")
    duration, concurrency = args.duration, args.concurrency
    env = report.environment()
    run = report.run_folder("balancer")
    with tempfile.TemporaryDirectory(prefix="genserve-balancer-") as tmp:
        work, models = Path(tmp), Path(tmp) / "models"
        models.mkdir()
        for model in (DCGAN, DDPM):
            (models / model).symlink_to(MODELS / model)

        def balance(deployment: LocalDeployment, load) -> dict[str, Any]:
            loads = [load(DCGAN, duration, concurrency), load(DDPM, duration, concurrency)]
            results = [running.result() for running in loads]
            per_model = {m: deployment.requests_per_replica(m) for m in (DCGAN, DDPM)}
            return {
                "loads": results,
                "requests_per_replica": per_model,
                "shares": {m: shares(c) for m, c in per_model.items()},
            }

        def rolling(deployment: LocalDeployment, load) -> dict[str, Any]:
            loads = [load(DDPM, duration, concurrency), load(DCGAN, duration, max(1, concurrency // 2))]
            time.sleep(2.0)
            began = time.monotonic()
            phases = deployment.rolling_restart()
            took = time.monotonic() - began
            under_load = time.monotonic() < min(running.ends_at for running in loads)
            return {
                "restart_seconds": round(took, 3),
                "finished_under_load": under_load,
                "phases_seconds": [{k: round(v, 3) for k, v in p.items()} for p in phases],
                "loads": [running.result() for running in loads],
            }

        def kill(deployment: LocalDeployment, load) -> dict[str, Any]:
            running = load(DDPM, duration, concurrency)
            time.sleep(duration / 4)
            held = deployment.server_states()["r0"].current
            killed_at = deployment.kill(0)
            down_at = deployment.wait_for_state("r0", up=False, timeout=30)
            state = deployment.server_states()["r0"]
            return {
                "calls_in_flight_on_killed_replica": held,
                "seconds_to_down": round(down_at - killed_at, 3),
                "down_state": {"status": state.status, "check": state.check, "why": state.check_desc},
                "loads": [running.result()],
            }

        def add(deployment: LocalDeployment, load) -> dict[str, Any]:
            running = load(DDPM, duration, concurrency)
            time.sleep(duration / 4)
            began = time.monotonic()
            replica = deployment.add_replica()
            up = time.monotonic()
            while replica.requests(DDPM) == 0 and time.monotonic() - up < 60:
                time.sleep(0.05)
            first_call = time.monotonic()
            result = running.result()
            per_replica = deployment.requests_per_replica(DDPM)
            return {
                "seconds_to_add_and_up": round(up - began, 3),
                "seconds_from_up_to_first_call": round(first_call - up, 3),
                "requests_per_replica": per_replica,
                "shares": shares(per_replica),
                "loads": [result],
            }

        scenarios = {}
        bodies = {"balance": (2, balance), "rolling": (2, rolling), "kill": (2, kill), "add": (2, add)}
        for i, (name, (replicas, body)) in enumerate(bodies.items(), 1):
            report.progress(i, len(bodies), f"{name}: {replicas} replicas, {duration:g} s of load")
            scenarios[name] = scenario(name, models, work, run, replicas, body)
    result = {
        "what": "genserve replicas behind HAProxy (deploy/local.py) under genserve bench load",
        "created": report.created(),
        "haproxy": version,
        "serve_args": list(SERVE_ARGS),
        "duration_s": duration,
        "concurrency": concurrency,
        "models": [DCGAN, f"{DDPM} ({STEPS} steps)"],
        "scenarios": scenarios,
        "environment": env,
    }
    (run / "balancer.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, outcome in scenarios.items():
        counts = [load["status_counts"] for load in outcome["loads"]]
        extra = {k: v for k, v in outcome.items() if k in ("shares", "seconds_to_down", "restart_seconds")}
        print(f"{name}: {counts} {extra}")
    print(f"wrote {run}")


if __name__ == "__main__":
    main()
