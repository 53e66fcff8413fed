"""Iterative models under load: one request at a time against concurrent requests, on a real server.

    python -m benchmarks.iterative_load --model pixelcnn-mnist --requests 16
    python -m benchmarks.iterative_load --model ldm-mnist --model ddpm-mnist --steps 50 --requests 32

For each model the server (``genserve serve`` on a repository holding just that model, ONNX
Runtime on this CPU) answers ``--requests`` one-image ``Generate`` calls twice: one at a time,
then from ``--concurrency`` client threads at once. Each phase reports images/s and latency, and
the step batch sizes it ran: the model's ``genserve_batch_size`` histogram (image slots per engine
step), scraped before and after the phase, so its difference is that phase's steps. A step of
more than one slot ran images of several requests: the step-level scheduler at work.

Each run writes ``results/runs/<date>-iterative_load/iterative_load.{json,png}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.report import new_output
from benchmarks.serverproc import start_server
from genserve.cli.defaults import DEFAULT_MODELS
from genserve.client import GenserveClient

BUCKET = re.compile(r'genserve_batch_size_bucket\{le="([^"]+)",model="([^"]+)"\} (\S+)')


def histogram(metrics_port: int, model: str) -> dict[float, float]:
    """Cumulative counts of the model's batch-size histogram: upper bound -> steps."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return {float(le): float(n) for le, m, n in BUCKET.findall(text) if m == model}


def per_size(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """The phase's steps per batch-size bucket (non-cumulative), for bounds that saw any."""
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0.0) for b in bounds]
    counts = np.diff([0.0, *delta])
    return {("+Inf" if np.isinf(b) else f"<={b:g}"): float(c) for b, c in zip(bounds, counts, strict=True) if c}


def phase(target: str, model: str, requests: int, concurrency: int, steps: int | None) -> dict:
    with GenserveClient(target, timeout=3600) as client:
        client.generate(model, 1, seed=10_000, steps=steps)  # warm-up, not counted
        latencies: list[float] = []

        def one(seed: int) -> None:
            started = time.perf_counter()
            client.generate(model, 1, seed=seed, steps=steps)
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    lat = np.asarray(latencies)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(wall, 2),
        "images_per_s": round(requests / wall, 4),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p99_s": round(float(np.percentile(lat, 99)), 3),
    }


def measure(model: str, requests: int, concurrency: int, steps: int | None, models: Path) -> dict:
    with tempfile.TemporaryDirectory() as repo:
        (Path(repo) / model).symlink_to((models / model).resolve())
        metrics_port = _free_port()
        server = start_server("--models", repo, "--metrics-port", str(metrics_port), timeout=600)
        try:
            rows = []
            for c in (1, concurrency):
                before = histogram(metrics_port, model)
                row = phase(server.target, model, requests, c, steps)
                row["batch_sizes"] = per_size(before, histogram(metrics_port, model))
                rows.append(row)
                print(
                    f"{model} concurrency {c}: {row['images_per_s']} images/s, steps by batch size {row['batch_sizes']}"
                )
        finally:
            server.stop()
    return {
        "model": model,
        "steps": steps,
        "phases": rows,
        "speedup": round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 3),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["models"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for offset, row in zip((-0.2, 0.2), run["phases"], strict=True):
            labels = list(row["batch_sizes"])
            ax.bar(
                np.arange(len(labels)) + offset,
                list(row["batch_sizes"].values()),
                width=0.4,
                label=f"concurrency {row['concurrency']}: {row['images_per_s']:.3g} images/s",
            )
            ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_title(f"{run['model']}" + (f", {run['steps']} steps" if run["steps"] else ""))
        ax.set_xlabel("image slots per engine step")
        ax.set_ylabel("steps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a served iterative model (repeatable)")
    parser.add_argument("--requests", type=int, default=16, help="one-image calls per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steps", type=int, help="diffusion steps (diffusion models only)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for model in args.model:
        steps = args.steps if "ddpm" in model or "ldm" in model else None
        runs.append(measure(model, args.requests, args.concurrency, steps, args.models))
    result = {"benchmark": "iterative_load", "models": runs}
    table = "\n".join(
        f"{r['model']}: {r['phases'][0]['images_per_s']} images/s one at a time, "
        f"{r['phases'][1]['images_per_s']} at concurrency {args.concurrency} ({r['speedup']}x)"
        for r in runs
    )
    report.write(result, args.json or new_output("iterative_load"), lambda p: plot(result, p), table)


if __name__ == "__main__":
    main()
