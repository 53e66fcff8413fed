"""genserve on its two gRPC transports, side by side: native (gRPC C++, ``serving/native``) and
grpcio (Python's ``grpc.aio``), with Triton's own load generator.

    bash benchmarks/peers/setup.sh perf         # once: perf_analyzer into .bench/
    python -m benchmarks.transports             # ~3 min; results/transports.json, results/perf/transport-*.csv

Both servers are started at once, with the same models and batcher settings as
``benchmarks.vs_triton`` (max batch 64, delay 0); perf_analyzer measures each concurrency on one
and then the other, ``--repeats`` times, interleaved, so drifts in machine load hit both alike.
Only the transport differs: the handlers, batcher and engine are the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks.serverproc import start_server
from benchmarks.vs_triton import RESULTS, input_data, pause_trainings, perf_analyzer, to_run, tools_env

TRANSPORTS = ("native", "grpcio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    parser.add_argument("--out", type=Path, default=RESULTS / "transports.json")
    args = parser.parse_args()
    env = tools_env()
    perf_dir = RESULTS / "perf"
    perf_dir.mkdir(parents=True, exist_ok=True)
    batching = ("--max-batch-size", "64", "--max-queue-delay-ms", "0")
    paused = pause_trainings(True)
    servers = {}
    runs = []
    try:
        for transport in TRANSPORTS:
            servers[transport] = start_server(*batching, "--frontend", transport)
        with tempfile.TemporaryDirectory() as tmp:
            data = input_data(Path(tmp) / "input.json", steps=None)
            for c in args.concurrency:
                for repeat in range(args.repeats):
                    for transport in TRANSPORTS:
                        out = perf_dir / f"transport-{transport}-{args.model}-c{c}-r{repeat + 1}.csv"
                        row = perf_analyzer(servers[transport].target, args.model, c, data, out, args.window_ms, env)
                        run = to_run(transport, args.model, c, row, out)
                        runs.append(run)
                        print(
                            f"{transport:7s} {args.model} c={c:3d} #{repeat + 1} {run.throughput:8.1f} req/s"
                            f"  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms",
                            flush=True,
                        )
    finally:
        for server in servers.values():
            server.stop()
        if paused:
            pause_trainings(False)
    summary = {}
    for c in args.concurrency:
        by = {t: [r for r in runs if r.server == t and r.concurrency == c] for t in TRANSPORTS}
        thr = {t: statistics.median(r.throughput for r in rs) for t, rs in by.items()}
        p99 = {t: statistics.median(r.p99_ms for r in rs) for t, rs in by.items()}
        summary[str(c)] = {
            "native_req_s": round(thr["native"], 1),
            "grpcio_req_s": round(thr["grpcio"], 1),
            "throughput_ratio": round(thr["native"] / thr["grpcio"], 3),
            "native_p99_ms": round(p99["native"], 2),
            "grpcio_p99_ms": round(p99["grpcio"], 2),
            "p99_ratio": round(p99["native"] / p99["grpcio"], 3),
        }
        print(
            f"c={c}: native/grpcio throughput {summary[str(c)]['throughput_ratio']:.2f}x, p99 "
            f"{summary[str(c)]['p99_ratio']:.2f}x (medians of {args.repeats})"
        )
    report = {
        "benchmark": "transports",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
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
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
