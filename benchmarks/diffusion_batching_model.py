"""What step-level joins can buy, as a function of how an engine step's cost grows with the batch.

    python -m benchmarks.diffusion_batching_model     # ~1 min; results/diffusion_batching_model.{json,png}

A discrete-event model of the diffusion scheduler: the server's own decision function
(``stepping.plan_iteration``, step- and request-level joins) runs on a virtual clock, and each
iteration costs what one engine step at that many slots costs. The workload is that of
``benchmarks.diffusion_batching``: one image per request, DDIM with 20, 50 and 100 steps in turn,
Poisson arrivals at a fraction of capacity: as in the measured benchmark, the lower of the two
policies' closed-loop throughputs with 16 clients.

Two cost curves:

- ``measured``: milliseconds per engine step at batch 1..16 as ``benchmarks.diffusion_batching``
  measured them on this machine (``engine_scaling`` in ``results/diffusion_batching.json``),
  linearly interpolated: on this CPU a step at batch 16 costs 11× one at batch 1.
- ``flat``: a *hypothetical* engine whose step at batch b costs c(1)·(1 + 0.02·(b − 1)), the
  shape of an accelerator that is far from saturated at these batch sizes. It is a model input,
  not a measurement of any device.

The model has no per-request host overhead and no gRPC, so its latencies are lower than a real
server's; it answers one question: which latency ratios the scheduling policy can reach on each
curve, with the server's own decisions.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.report import new_output
from genserve import images
from genserve.serving.batching import Pending
from genserve.serving.stepping import JoinPolicy, Slot, plan_iteration

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (20, 50, 100)
MAX_SLOTS = 16
FLAT_SLOPE = 0.02


def measured_curve(path: Path = RESULTS / "diffusion_batching.json") -> dict[int, float]:
    """Seconds per engine step by batch size, from the measured engine scaling."""
    rows = json.loads(path.read_text())["engine_scaling"]
    return {row["batch_size"]: row["ms_per_step"] / 1e3 for row in rows}


def step_cost(curve: dict[int, float]):
    sizes = sorted(curve)
    return lambda b: float(np.interp(b, sizes, [curve[s] for s in sizes]))


def simulate(cost, join: JoinPolicy, requests: int, seed: int, rate: float | None = None) -> np.ndarray:
    """Latencies (s) of ``requests`` Poisson arrivals at ``rate``/s under ``join``; with no rate,
    closed loop: ``MAX_SLOTS`` clients, each sending its next request when its last one returns."""
    steps = np.array([STEPS[i % len(STEPS)] for i in range(requests)])
    if rate is None:
        arrivals = np.full(requests, np.inf)
        arrivals[:MAX_SLOTS] = 0.0
    else:
        arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, requests))
    done = np.full(requests, np.nan)
    waiting: deque[Pending] = deque()
    slots: list[Slot] = []
    now, nxt, issued = 0.0, 0, MAX_SLOTS
    while nxt < requests or waiting or slots:
        while nxt < requests and arrivals[nxt] <= now:
            waiting.append(Pending(nxt, 1, arrival=float(arrivals[nxt])))
            nxt += 1
        plan = plan_iteration(slots, list(waiting), (), MAX_SLOTS, now, join)
        for i in plan.finished:
            done[slots[i].request] = now
            if rate is None and issued < requests:  # that client sends its next request now
                arrivals[issued] = now
                issued += 1
        leaving = set(plan.finished)
        slots = [s for i, s in enumerate(slots) if i not in leaving]
        for take in plan.joins:
            waiting.popleft()  # one image per request: a join takes the oldest waiting request whole
            slots.append(Slot(take.id, 0, 0, int(steps[take.id])))
        if not slots:
            now = max(now, float(arrivals[nxt])) if nxt < requests else now
            continue
        now += cost(len(slots))
        slots = [Slot(s.request, s.image, s.step + 1, s.steps) for s in slots]
    return done - arrivals


def capacity(cost, join: JoinPolicy, requests: int) -> float:
    """Closed-loop throughput (requests/s) with ``MAX_SLOTS`` clients."""
    latency = simulate(cost, join, requests, seed=0)
    return MAX_SLOTS * requests / float(latency.sum())  # Little's law: N clients / mean latency


def compare(cost, capacities: dict[str, float], load: float, requests: int, seed: int) -> dict:
    rate = load * min(capacities.values())
    row = {"load": load, "offered_rps": round(rate, 3)}
    for join in JoinPolicy:
        latency = simulate(cost, join, requests, seed, rate)[requests // 10 :]  # drop the warm-up
        row[join.value] = {
            "mean_s": round(float(latency.mean()), 4),
            "p99_s": round(float(np.percentile(latency, 99)), 4),
        }
    row["mean_ratio"] = round(row["step"]["mean_s"] / row["request"]["mean_s"], 3)
    row["p99_ratio"] = round(row["step"]["p99_s"] / row["request"]["p99_s"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="arrivals per simulated run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.json = args.json or new_output("diffusion_batching_model")  # a new run folder each run

    measured = measured_curve()
    flat = {b: measured[1] * (1 + FLAT_SLOPE * (b - 1)) for b in range(1, MAX_SLOTS + 1)}
    curves = {"measured": measured, "flat": flat}
    loads = (0.3, 0.5, 0.7, 0.8, 0.9)
    rows, capacities = {}, {}
    total = len(curves) * len(loads)
    for c, (name, curve) in enumerate(curves.items()):
        cost = step_cost(curve)
        capacities[name] = {join.value: round(capacity(cost, join, args.requests), 3) for join in JoinPolicy}
        rows[name] = []
        for i, load in enumerate(loads):
            report.progress(c * len(loads) + i + 1, total, f"{name} curve at {load:.0%} of capacity")
            rows[name].append(compare(cost, capacities[name], load, args.requests, args.seed))
    result = {
        "what": "discrete-event model of step- vs request-level joins (stepping.plan_iteration on a virtual "
        f"clock), 1 image per request, DDIM {list(STEPS)} steps in turn, {MAX_SLOTS} slots, Poisson arrivals",
        "created": report.created(),
        "command": "python -m benchmarks.diffusion_batching_model",
        "curves_ms_per_step": {
            name: {b: round(s * 1e3, 3) for b, s in sorted(curve.items())} for name, curve in curves.items()
        },
        "flat_curve": f"hypothetical: c(b) = c(1) * (1 + {FLAT_SLOPE} * (b - 1)); not a measurement",
        "requests_per_run": args.requests,
        "capacity_rps": capacities,
        "rows": rows,
    }
    lines = ["| cost curve | load | step-level mean / request-level | p99 ratio |", "| --- | ---: | ---: | ---: |"]
    for name, curve_rows in rows.items():
        lines += [f"| {name} | {r['load']:.0%} | {r['mean_ratio']:.2f} | {r['p99_ratio']:.2f} |" for r in curve_rows]
    report.write(result, args.json, lambda png: plot(rows, png), "\n".join(lines))


def plot(rows: dict, path: Path) -> Path:
    with images.saved_figure(path, figsize=(8, 4)) as (fig, ax):
        for name, curve_rows in rows.items():
            loads = [r["load"] for r in curve_rows]
            ax.plot(loads, [r["mean_ratio"] for r in curve_rows], "o-", label=f"{name}: mean")
            ax.plot(loads, [r["p99_ratio"] for r in curve_rows], "s--", label=f"{name}: p99")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.axhline(0.7, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("offered load (fraction of capacity)")
        ax.set_ylabel("step-level / request-level latency")
        ax.legend()
        ax.set_title("Step-level joins against request-level, by engine cost curve (model)")
    return path


if __name__ == "__main__":
    main()
