"""The side-by-side benchmark's bookkeeping: perf_analyzer CSV rows to runs, ratios, the table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import vs_triton

CSV_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency"
)


def perf_row(throughput: float, p99_us: int, queue_us: int = 300, compute_us: int = 900) -> dict[str, str]:
    values = f"16,{throughput},5,1000,{queue_us},0,{compute_us},0,2,2100,2500,2700,{p99_us}"
    return dict(zip(CSV_HEADER.split(","), values.split(","), strict=True))


def test_a_perf_analyzer_row_becomes_a_run_in_milliseconds():
    csv = vs_triton.RESULTS / "perf" / "genserve-dcgan-mnist-c16.csv"
    run = vs_triton.to_run("genserve", "dcgan-mnist", 16, perf_row(812.5, 4200), csv)
    assert run.throughput == 812.5
    assert run.p99_ms == pytest.approx(4.2)
    assert run.p50_ms == pytest.approx(2.1)
    assert run.server_queue_ms == pytest.approx(0.3)
    assert run.server_compute_ms == pytest.approx(0.9)
    assert run.avg_ms == pytest.approx((5 + 1000 + 300 + 0 + 900 + 0 + 2) / 1000)
    assert run.csv == "perf/genserve-dcgan-mnist-c16.csv"


def test_ratios_and_table_compare_genserve_with_triton_at_each_concurrency():
    csv = vs_triton.RESULTS / "perf" / "x.csv"
    runs = [
        vs_triton.to_run("genserve", "dcgan-mnist", 16, perf_row(900.0, 20000), csv),
        vs_triton.to_run("triton", "dcgan-mnist", 16, perf_row(600.0, 40000), csv),
        vs_triton.to_run("genserve", "dcgan-mnist", 64, perf_row(1000.0, 90000), csv),  # no Triton run: no ratio
    ]
    ratios = vs_triton.ratios(runs)
    assert ratios == {"dcgan-mnist": {"16": {"throughput_ratio": 1.5, "p99_ratio": 0.5}}}
    table = vs_triton.markdown_table({"runs": [asdict(r) for r in runs], "ratios": ratios})
    assert "| dcgan-mnist | 16 | 900.0 | 600.0 | 1.50× | 20.00 | 40.00 | 0.50× |" in table
    assert "| 64 |" not in table


def test_repeats_are_compared_by_their_medians():
    csv = vs_triton.RESULTS / "perf" / "x.csv"
    runs = [
        vs_triton.to_run(server, "dcgan-mnist", 16, perf_row(throughput, p99), csv)
        for server, throughput, p99 in [
            ("genserve", 900.0, 20000),
            ("triton", 600.0, 40000),
            ("genserve", 1500.0, 10000),  # an outlier each way: the medians ignore them
            ("triton", 200.0, 90000),
            ("genserve", 960.0, 24000),
            ("triton", 640.0, 30000),
        ]
    ]
    assert vs_triton.ratios(runs) == {"dcgan-mnist": {"16": {"throughput_ratio": 1.6, "p99_ratio": 0.5}}}
    table = vs_triton.markdown_table({"runs": [asdict(r) for r in runs], "ratios": vs_triton.ratios(runs)})
    assert "| dcgan-mnist | 16 | 960.0 | 600.0 | 1.60× | 20.00 | 40.00 | 0.50× |" in table


def test_input_data_sends_distinct_seeds_and_the_step_count_only_to_diffusion(tmp_path: Path):
    gan = json.loads(vs_triton.input_data(tmp_path / "gan.json", steps=None, rows=3).read_text())
    ddpm = json.loads(vs_triton.input_data(tmp_path / "ddpm.json", steps=10, rows=3).read_text())
    assert gan == {"data": [{"SEED": [0]}, {"SEED": [1]}, {"SEED": [2]}]}
    assert [row["STEPS"] for row in ddpm["data"]] == [[10], [10], [10]]


def test_no_benchmark_signals_processes_it_did_not_start():
    """Benchmarks stop only their own children (``benchmarks/peers/launch.py``): nothing looks other
    processes up by name to pause or kill them (the old ``pause_trainings`` SIGSTOPped every
    ``genserve train`` on the machine)."""
    forbidden = ("pgrep", "pkill", "killall", "SIGSTOP", "pause_trainings")
    sources = [p for p in Path(vs_triton.__file__).parent.rglob("*.py") if "tests" not in p.parts]
    found = {str(p.name): word for p in sources for word in forbidden if word in p.read_text()}
    assert found == {}
