"""What tracing every call costs: the same server with and without ``--trace-rate 1``, both up,
perf_analyzer on `dcgan-mnist` (the smallest calls, where a per-call cost shows most),
interleaved repeats, medians.

    bash benchmarks/peers/setup.sh perf         # once: perf_analyzer
    python -m benchmarks.trace_overhead         # ~2 min; a new results/runs/<date>-trace_overhead/

Goal: tracing at 100% costs at most 5% throughput at concurrency 16 (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from benchmarks import report
from benchmarks.serverproc import start_server
from benchmarks.vs_triton import compare, measure_interleaved, medians, tools_env

GOAL = 0.95  # traced / untraced throughput at concurrency 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    args = parser.parse_args()
    env = tools_env()
    folder = report.run_folder("trace_overhead")
    environment = report.environment()
    batching = ("--max-batch-size", "64", "--max-queue-delay-ms", "0")
    variants = {"untraced": (), "traced": ("--trace-rate", "1", "--trace-file", str(folder / "trace.json"))}
    servers = {}
    try:
        for name, extra in variants.items():
            servers[name] = start_server(*batching, *extra)
        targets = {name: server.target for name, server in servers.items()}
        runs = measure_interleaved(targets, args.model, args.concurrency, args.repeats, folder, args.window_ms, env)
    finally:
        for server in servers.values():
            server.stop()
    by = medians([asdict(r) for r in runs])
    summary = {str(c): compare(by, args.model, c, "traced", "untraced") for c in args.concurrency}
    for c in args.concurrency:
        print(
            f"c={c}: traced/untraced throughput {summary[str(c)]['throughput_ratio']:.3f}x (medians of {args.repeats})"
        )
    measured = summary.get("16", {}).get("throughput_ratio")
    trace_bytes = (folder / "trace.json").stat().st_size if (folder / "trace.json").exists() else 0
    (folder / "trace.json").unlink(missing_ok=True)  # hundreds of MB of spans: the ratio is the result
    result = {
        "benchmark": "trace_overhead",
        "created": report.created(),
        "environment": environment,
        "settings": {
            "model": args.model,
            "trace": "--trace-rate 1 --trace-file (Chrome-trace JSON through OpenTelemetry's SDK)",
            "max_batch_size": 64,
            "repeats": args.repeats,
            "window_ms": args.window_ms,
            "load_generator": "perf_analyzer, KServe gRPC, closed loop",
        },
        "trace_file_bytes": trace_bytes,
        "median_by_concurrency": summary,
        "goal": {
            "traced_over_untraced_c16": GOAL,
            "measured": measured,
            "met": None if measured is None else measured >= GOAL,
        },
        "runs": [asdict(r) for r in runs],
    }
    (folder / "trace_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
