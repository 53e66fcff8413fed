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


def _histogram_mean_us(metrics: str, name: str, model: str) -> tuple[float, float]:
    """(sum in µs, count) of a Prometheus histogram of ``model`` in a scrape."""
    values = {}
    for line in metrics.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'{name}_{part}{{model="{model}"}}'):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0) * 1e6, values.get("count", 0.0)


@pytest.mark.parametrize(("model", "steps"), [("dcgan-tiny", None), ("ddpm-tiny", 4)])
def test_perf_analyzers_server_side_breakdown_matches_genserves_own_histograms(server, tmp_path, model, steps):
    """perf_analyzer's server-side queue and compute per request (from KServe ModelStatistics) and
    genserve's Prometheus histograms over the same load agree within 10% (or 0.1 ms, for queue
    times near zero): both count the same requests' same observations."""
    before = server.scrape_metrics()
    data = vs_triton.input_data(tmp_path / "input.json", steps, rows=8)
    row = vs_triton.perf_analyzer(
        server.target,
        model,
        concurrency=4,
        data=data,
        out_csv=tmp_path / "out.csv",
        window_ms=2000,
        env=vs_triton.tools_env(),
        stability_percent=100,
        max_trials=3,
    )
    after = server.scrape_metrics()
    ours = {}
    for stage, histogram in (
        ("Server Queue", "genserve_queue_duration_seconds"),
        ("Server Compute Infer", "genserve_request_compute_duration_seconds"),
    ):
        (s0, n0), (s1, n1) = _histogram_mean_us(before, histogram, model), _histogram_mean_us(after, histogram, model)
        ours[stage] = (s1 - s0) / (n1 - n0)
    for stage, mean_us in ours.items():
        theirs = float(row[stage])
        assert abs(theirs - mean_us) <= max(0.10 * mean_us, 100.0), (stage, theirs, mean_us, row)
