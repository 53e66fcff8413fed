"""Dynamic batching on ``dcgan-mnist``: throughput and latency with and without batching, and
with several engine instances, measured in one run against real server processes.

    python -m benchmarks.batching            # ~2 min; writes results/batching.json and .png

Each configuration gets its own server (started, measured, stopped in turn), driven by the
closed-loop load generator (``genserve bench load``) at concurrency 32 and at concurrency 1,
one image per request. The engine-only table (images/s of one ONNX Runtime session at each
batch size, no server) says how much batching can gain at most on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.report import new_output
from benchmarks.serverproc import start_server
from genserve import images
from genserve.loadgen import LoadSpec, run_load

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "dcgan-mnist"

# name -> serve flags; the first is the batching setting, the second its baseline.
CONFIGS = {
    "batch64": ["--max-batch-size", "64", "--max-queue-delay-ms", "0"],
    "batch1": ["--max-batch-size", "1"],
    "batch64_delay2ms": ["--max-batch-size", "64", "--max-queue-delay-ms", "2"],
    "batch64_2instances": ["--max-batch-size", "64", "--instances", "2"],
}


def engine_scaling(batch_sizes=(1, 2, 4, 8, 16, 32, 64), seconds: float = 1.0) -> list[dict]:
    """Images/s of the bare engine per batch size (what batching can buy at most)."""
    from genserve.serving.runner import ModelRunner

    threads = os.cpu_count() or 1
    runner = ModelRunner(Path(__file__).resolve().parent.parent / "models" / MODEL, intra_op_threads=threads)
    rows = []
    for b in batch_sizes:
        seeds, index = np.zeros(b, dtype=np.int64), np.arange(b)
        for _ in range(3):
            runner.sample_images(seeds, index)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runner.sample_images(seeds, index)
            n += 1
        per_batch = (time.perf_counter() - start) / n
        rows.append({"batch_size": b, "ms_per_batch": round(per_batch * 1e3, 3), "images_per_s": round(b / per_batch)})
        print(f"engine batch {b:3d}: {per_batch * 1e3:7.3f} ms  {b / per_batch:8.0f} images/s")
    return rows


def measure(flags: list[str], duration: float) -> dict:
    server = start_server(*flags)
    try:
        out = {}
        for concurrency in (32, 1):
            spec = LoadSpec(server=server.target, model=MODEL, concurrency=concurrency, duration=duration, warmup=1.0)
            report = run_load(spec).to_dict()
            report.pop("timeline", None)
            out[f"c{concurrency}"] = report
            print(
                f"  c={concurrency:2d}: {report['throughput']:7.0f} req/s  p50 {report['latency_p50'] * 1e3:6.2f} ms"
                f"  p99 {report['latency_p99'] * 1e3:6.2f} ms  {report['status_counts']}"
            )
        return out
    finally:
        server.stop()


def plot(result: dict, path: Path) -> None:
    names = list(result["configs"])
    with images.saved_figure(path, 1, 3, figsize=(14, 4)) as (fig, axes):
        axes[0].bar(names, [result["configs"][n]["c32"]["throughput"] for n in names])
        axes[0].set_title("throughput at concurrency 32 (req/s)")
        axes[1].bar(names, [result["configs"][n]["c1"]["latency_p99"] * 1e3 for n in names])
        axes[1].set_title("p99 latency at concurrency 1 (ms)")
        for ax in axes[:2]:
            ax.tick_params(axis="x", rotation=20)
        eng = result["engine_scaling"]
        axes[2].plot([r["batch_size"] for r in eng], [r["images_per_s"] for r in eng], "o-")
        axes[2].set_xscale("log", base=2)
        axes[2].set_title("bare engine: images/s by batch size")
        axes[2].set_xlabel("batch size")
        fig.suptitle(f"{MODEL}: dynamic batching, {result['machine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured load run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.json = args.json or new_output("batching")  # a new run folder each run
    result = {
        "what": f"{MODEL}, 1 image per request, closed loop, server and load generator on the same machine",
        "machine": f"{platform.machine()} CPU x{os.cpu_count()}, Python {platform.python_version()}",
        "engine_scaling": engine_scaling(),
        "configs": {},
    }
    for name, flags in CONFIGS.items():
        print(f"{name}: genserve serve {' '.join(flags)}")
        result["configs"][name] = {"flags": flags, **measure(flags, args.duration)}
    c = result["configs"]
    result["throughput_ratio_c32"] = round(c["batch64"]["c32"]["throughput"] / c["batch1"]["c32"]["throughput"], 3)
    result["p99_ratio_c1"] = round(c["batch64"]["c1"]["latency_p99"] / c["batch1"]["c1"]["latency_p99"], 3)
    result["instances_ratio_c32"] = round(
        c["batch64_2instances"]["c32"]["throughput"] / c["batch64"]["c32"]["throughput"], 3
    )
    eng = {r["batch_size"]: r["images_per_s"] for r in result["engine_scaling"]}
    result["engine_batching_gain"] = round(eng[64] / eng[1], 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.json.with_suffix(".png"))
    keys = ("throughput_ratio_c32", "p99_ratio_c1", "instances_ratio_c32", "engine_batching_gain")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
