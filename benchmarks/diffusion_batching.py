"""Step-level against request-level batching of diffusion requests, measured in one run.

    python -m benchmarks.diffusion_batching     # ~6 min; writes results/diffusion_batching.json and .png

Two servers on the bundled ``ddpm-mnist``, identical but for ``--diffusion-batching step|request``.
Requests: one image each, DDIM (eta 0) with 20, 50 and 100 steps in turn. Capacity is the lower of
the two servers' closed-loop throughputs at concurrency 16; then each server gets open-loop
Poisson arrivals at 70% of that capacity, and we compare mean and p99 latency and throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from benchmarks.report import new_output
from benchmarks.serverproc import start_server
from genserve import images
from genserve.loadgen import LoadSpec, run_load

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "ddpm-mnist"
STEPS = (20, 50, 100)
MODES = ("step", "request")


def engine_scaling(batch_sizes=(1, 2, 4, 8, 16), calls: int = 20) -> list[dict]:
    """Milliseconds of one fused step per batch size: how much a fuller batch saves per image here."""
    import time

    import numpy as np

    from genserve.serving.runner import ModelRunner

    runner = ModelRunner(
        Path(__file__).resolve().parent.parent / "models" / MODEL, intra_op_threads=os.cpu_count() or 1
    )
    rows = []
    for b in batch_sizes:
        feeds = {
            "x": np.zeros((b, 1, 28, 28), np.float32),
            "t": np.full(b, 500, np.int64),
            "coef": np.ones((b, 6), np.float32),
            "noise": np.zeros((b, 1, 28, 28), np.float32),
        }
        runner.engine.run(feeds)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            runner.engine.run(feeds)
            times.append(time.perf_counter() - start)
        ms = float(np.median(times)) * 1e3
        rows.append({"batch_size": b, "ms_per_step": round(ms, 3), "ms_per_image_step": round(ms / b, 3)})
        print(f"engine step at batch {b:2d}: {ms:7.2f} ms ({ms / b:6.2f} ms per image)")
    return rows


def compare(
    flags: tuple[str, ...] = (),
    steps: tuple[int, ...] = STEPS,
    duration: float = 120.0,
    load: float = 0.7,
    capacity_duration: float = 15.0,
) -> tuple[dict, dict]:
    """Step-level against request-level batching on servers started with ``flags``: each mode's
    closed-loop capacity at concurrency 16, then open-loop Poisson arrivals at ``load`` of the
    lower capacity for ``duration`` s per mode. Returns (the summary with the ratios, the load
    reports by mode)."""
    capacity = {}
    for mode in MODES:
        server = start_server(*flags, "--diffusion-batching", mode)
        try:
            spec = LoadSpec(server.target, MODEL, concurrency=16, duration=capacity_duration, steps=steps, warmup=3.0)
            capacity[mode] = run_load(spec).stats["throughput"]
        finally:
            server.stop()
        print(f"{mode}-level capacity (closed loop, concurrency 16): {capacity[mode]:.2f} req/s")
    rate = load * min(capacity.values())
    print(f"open loop at {rate:.2f} req/s ({load:.0%} of {min(capacity.values()):.2f})")

    runs = {}
    for mode in MODES:
        server = start_server(*flags, "--diffusion-batching", mode)
        try:
            spec = LoadSpec(server.target, MODEL, rate=rate, duration=duration, steps=steps, warmup=2.0)
            report = run_load(spec)
        finally:
            server.stop()
        runs[mode] = report
        r = report.stats
        print(
            f"{mode:>7}-level: {r['throughput']:.2f} req/s, mean {r['latency_mean']:.3f} s, "
            f"p99 {r['latency_p99']:.3f} s, {r['status_counts']}"
        )
    s, q = runs["step"].stats, runs["request"].stats
    summary = {
        "capacity_rps": {m: round(c, 3) for m, c in capacity.items()},
        "offered_rps": round(rate, 3),
        "step": {k: s[k] for k in ("throughput", "latency_mean", "latency_p50", "latency_p99", "status_counts")},
        "request": {k: q[k] for k in ("throughput", "latency_mean", "latency_p50", "latency_p99", "status_counts")},
        "mean_latency_ratio": round(s["latency_mean"] / q["latency_mean"], 3),
        "p99_latency_ratio": round(s["latency_p99"] / q["latency_p99"], 3),
        "throughput_ratio": round(s["throughput"] / q["throughput"], 3),
    }
    return summary, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 120 s: ~360 requests per server. At 40 s (~130) the p99 is the second-slowest request and
    # the ratios swung from 0.79x to 1.30x between runs.
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of open-loop load per server")
    parser.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of capacity")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.json = args.json or new_output("diffusion_batching")  # a new run folder each run

    scaling = engine_scaling()
    summary, runs = compare(duration=args.duration, load=args.load)
    result = {
        "what": f"{MODEL}, 1 image per request, DDIM steps {list(STEPS)} in turn, Poisson arrivals",
        "machine": f"{platform.machine()} CPU x{os.cpu_count()}, Python {platform.python_version()}",
        "engine_scaling": scaling,
        **summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.json.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("mean_latency_ratio", "p99_latency_ratio", "throughput_ratio")}, indent=2))


def plot(runs: dict, path: Path) -> None:
    with images.saved_figure(path, figsize=(8, 4)) as (fig, ax):
        for mode, report in runs.items():
            ok = [r for r in report.records if r.status == "OK"]
            ax.scatter([r.sent for r in ok], [r.latency for r in ok], s=6, label=f"{mode}-level")
        ax.set_xlabel("send time (s)")
        ax.set_ylabel("latency (s)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"{MODEL}: step-level vs request-level batching (DDIM {'/'.join(map(str, STEPS))} steps)")


if __name__ == "__main__":
    main()
