"""genserve's two gRPC transports serving TLS, side by side: native (gRPC C++) against grpcio, with
Triton's load generator (perf_analyzer, a C++ gRPC client) over TLS.

    bash benchmarks/peers/setup.sh perf      # once: perf_analyzer into .bench/
    python -m benchmarks.tls                 # ~3 min; a new benchmarks/results/runs/<date>-tls/

Both servers get the same throwaway certificate (``deploy.certs``), models and batcher settings
(max batch 64, delay 0); each concurrency is measured on one and then the other, ``--repeats``
times, interleaved, and the medians are compared. The goal: native ≥ 1.3× grpcio's throughput at
concurrency 16.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks import report
from benchmarks.serverproc import start_server
from benchmarks.transports import TRANSPORTS
from benchmarks.vs_triton import compare, measure_interleaved, medians, tools_env
from deploy.certs import make_pki

GOAL = 1.3  # native / grpcio throughput at concurrency 16, both serving TLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    args = parser.parse_args()
    env = tools_env()
    folder = report.run_folder("tls")
    environment = report.environment()
    batching = ("--max-batch-size", "64", "--max-queue-delay-ms", "0")
    servers = {}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki")
        tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
        client_tls = ("--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(pki.ca))
        try:
            for transport in TRANSPORTS:
                servers[transport] = start_server(*batching, *tls, "--frontend", transport, tls_ca=pki.ca)
            targets = {name: f"localhost:{server.port}" for name, server in servers.items()}  # the certificate's name
            runs = measure_interleaved(
                targets, args.model, args.concurrency, args.repeats, folder, args.window_ms, env, client_tls
            )
        finally:
            for server in servers.values():
                server.stop()
    by = medians([asdict(r) for r in runs])
    summary = {str(c): compare(by, args.model, c, *TRANSPORTS) for c in args.concurrency}
    c16 = summary.get("16", {}).get("throughput_ratio")
    result = {
        "benchmark": "tls",
        "created": report.created(),
        "environment": environment,
        "settings": {
            "model": args.model,
            "tls": "server certificate only (ECDSA P-256), TLS 1.3",
            "max_batch_size": 64,
            "max_queue_delay_ms": 0,
            "repeats": args.repeats,
            "window_ms": args.window_ms,
            "load_generator": "perf_analyzer (gRPC over TLS), closed loop",
        },
        "median_by_concurrency": summary,
        "goal": {
            "native_over_grpcio_throughput_c16": GOAL,
            "measured": c16,
            "met": None if c16 is None else c16 >= GOAL,
        },
        "runs": [{**asdict(r), "transport": r.server} for r in runs],
    }
    (folder / "tls.json").write_text(json.dumps(result, indent=2) + "\n")
    for c, row in summary.items():
        print(
            f"c={c}: native {row['native_req_s']} req/s, grpcio {row['grpcio_req_s']} req/s, "
            f"throughput {row['throughput_ratio']:.2f}x, p99 {row['p99_ratio']:.2f}x (medians of {args.repeats})"
        )
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
