"""Triton's own load generator, perf_analyzer, runs against genserve's KServe v2 service and reads
server-side queue and compute times from its statistics (it refuses statistics it finds
inconsistent, so this also checks their shape).

perf_analyzer is a native binary from an old tritonclient wheel (see benchmarks/peers/setup.sh,
which .ci/run runs with ``perf``); without it the test skips and says so."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

BENCH = Path(__file__).resolve().parents[2] / ".bench" / "perf"
PERF_ANALYZER = BENCH / "bin" / "perf_analyzer"

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(), reason="perf_analyzer not installed: run `bash benchmarks/peers/setup.sh perf`"
)


def run_perf_analyzer(server: ServerProcess, model: str, tmp_path: Path, steps: int | None = None) -> dict[str, str]:
    rows = [{"SEED": [seed]} | ({"STEPS": [steps]} if steps else {}) for seed in range(8)]
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": rows}))
    out = tmp_path / "out.csv"
    libs = [str(p) for p in BENCH.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib")]
    proc = subprocess.run(
        [
            str(PERF_ANALYZER),
            *("-m", model, "-i", "grpc", "-u", server.target, "--concurrency-range", "2:2"),
            *("--input-data", str(data), "--measurement-interval", "1500"),
            *("--stability-percentage", "100", "--max-trials", "4", "-f", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LD_LIBRARY_PATH": ":".join(libs)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with out.open() as f:
        return next(csv.DictReader(f))


@pytest.mark.parametrize(("model", "steps"), [("dcgan-tiny", None), ("ddpm-tiny", 2)])
def test_perf_analyzer_measures_genserve_with_server_side_queue_and_compute(server, tmp_path, model, steps):
    row = run_perf_analyzer(server, model, tmp_path, steps)
    assert float(row["Inferences/Second"]) > 0
    assert float(row["p99 latency"]) > 0
    assert float(row["Server Compute Infer"]) > 0  # microseconds per request, from ModelStatistics
    assert float(row["Server Queue"]) >= 0
