"""Cold start: seconds from spawning ``genserve serve`` (bundled models, ONNX Runtime on CPU)
to grpc.health.v1 reporting SERVING. Writes benchmarks/results/cold_start.json."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

from benchmarks.report import new_output
from benchmarks.serverproc import start_server

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.json = args.json or new_output("cold_start")  # a new run folder each run
    times, codes = [], []
    for i in range(args.runs):
        server = start_server()
        times.append(server.serving_after)
        code = server.stop()
        codes.append(code)
        print(f"run {i + 1}/{args.runs}: SERVING after {server.serving_after:.2f} s; SIGTERM exit code {code}")
    result = {
        "what": "seconds from process spawn to health SERVING, bundled models, onnxruntime CPU",
        "machine": f"{platform.machine()} CPU, {platform.python_version()}",
        "runs": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "sigterm_exit_codes": codes,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
