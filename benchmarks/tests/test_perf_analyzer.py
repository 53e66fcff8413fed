"""Triton's own load generator, perf_analyzer, runs against genserve's KServe v2 service and reads
server-side queue and compute times from its statistics (it refuses statistics it finds
inconsistent, so this also checks their shape). It is driven by the side-by-side benchmark's own
functions (``benchmarks.vs_triton``).

perf_analyzer is a native binary from an old tritonclient wheel (see benchmarks/peers/setup.sh,
which .ci/run runs with ``perf``); without it the test skips and says so."""

from __future__ import annotations

import pytest

from benchmarks import vs_triton

pytestmark = pytest.mark.skipif(
    not vs_triton.PERF_ANALYZER.exists(),
    reason="perf_analyzer not installed: run `bash benchmarks/peers/setup.sh perf`",
)


@pytest.mark.parametrize(("model", "steps"), [("dcgan-tiny", None), ("ddpm-tiny", 2)])
def test_perf_analyzer_measures_genserve_with_server_side_queue_and_compute(server, tmp_path, model, steps):
    data = vs_triton.input_data(tmp_path / "input.json", steps, rows=8)
    row = vs_triton.perf_analyzer(
        server.target,
        model,
        concurrency=2,
        data=data,
        out_csv=tmp_path / "out.csv",
        window_ms=1500,
        env=vs_triton.tools_env(),
        stability_percent=100,
        max_trials=4,
    )
    assert float(row["Inferences/Second"]) > 0
    assert float(row["p99 latency"]) > 0
    assert float(row["Server Compute Infer"]) > 0  # microseconds per request, from ModelStatistics
    assert float(row["Server Queue"]) >= 0
