"""genserve on its two gRPC transports, side by side: native (gRPC C++, ``serving/native``) and
grpcio (Python's ``grpc.aio``), with Triton's own load generator.

    bash benchmarks/peers/setup.sh perf         # once: perf_analyzer into .bench/
    python -m benchmarks.transports             # ~3 min; a new results/runs/<date>-transports/

Both servers are started at once, with the same models and batcher settings as
``benchmarks.vs_triton`` (max batch 64, delay 0); perf_analyzer measures each concurrency on one
and then the other, ``--repeats`` times, interleaved, so drifts in machine load hit both alike.
Only the transport differs: the handlers, batcher and engine are the same code.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from benchmarks import report as report_module
from benchmarks.serverproc import start_server
from benchmarks.vs_triton import compare, measure_interleaved, medians, tools_env

TRANSPORTS = ("native", "grpcio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    args = parser.parse_args()
    env = tools_env()
    perf_dir = report_module.run_folder("transports")
    environment = report_module.environment()
    batching = ("--max-batch-size", "64", "--max-queue-delay-ms", "0")
    servers = {}
    runs = []
    try:
        for transport in TRANSPORTS:
            servers[transport] = start_server(*batching, "--frontend", transport)
        targets = {name: server.target for name, server in servers.items()}
        runs = measure_interleaved(targets, args.model, args.concurrency, args.repeats, perf_dir, args.window_ms, env)
    finally:
        for server in servers.values():
            server.stop()
    by = medians([asdict(r) for r in runs])
    summary = {str(c): compare(by, args.model, c, *TRANSPORTS) for c in args.concurrency}
    for c in args.concurrency:
        print(
            f"c={c}: native/grpcio throughput {summary[str(c)]['throughput_ratio']:.2f}x, p99 "
            f"{summary[str(c)]['p99_ratio']:.2f}x (medians of {args.repeats})"
        )
    report = {
        "benchmark": "transports",
        "environment": environment,
        "settings": {
            "model": args.model,
            "max_batch_size": 64,
            "max_queue_delay_ms": 0,
            "repeats": args.repeats,
            "window_ms": args.window_ms,
            "load_generator": "perf_analyzer 2.48.0, gRPC, closed loop",
        },
        "median_by_concurrency": summary,
        "runs": [{**asdict(r), "transport": r.server} for r in runs],
    }
    out = perf_dir / "transports.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
