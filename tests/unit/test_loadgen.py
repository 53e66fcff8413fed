"""The load generator's statistics (a pure function of per-request records) and its spec checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genserve.loadgen import LoadReport, LoadSpec, RequestRecord, summarize


def rec(sent: float, latency: float, status: str = "OK") -> RequestRecord:
    return RequestRecord(sent=sent, latency=latency, status=status)


def test_percentiles_are_numpy_linear_over_ok_responses_only():
    ok = [0.010, 0.020, 0.030, 0.040, 0.100]
    records = [rec(i * 0.1, lat) for i, lat in enumerate(ok)] + [rec(0.05, 5.0, "DEADLINE_EXCEEDED")]
    stats = summarize(records, duration=2.0, send_duration=2.0, num_images=1)
    assert stats["latency_p50"] == pytest.approx(np.percentile(ok, 50))
    assert stats["latency_p90"] == pytest.approx(np.percentile(ok, 90))
    assert stats["latency_p99"] == pytest.approx(np.percentile(ok, 99))
    assert stats["latency_mean"] == pytest.approx(np.mean(ok))
    assert stats["latency_max"] == pytest.approx(0.1)  # not the 5 s failure


def test_status_counts_and_latency_by_status():
    records = [rec(0.0, 0.01), rec(0.1, 0.03), rec(0.2, 0.002, "RESOURCE_EXHAUSTED"), rec(0.3, 0.004, "NOT_FOUND")]
    records.append(rec(0.4, 0.006, "RESOURCE_EXHAUSTED"))
    stats = summarize(records, duration=1.0, send_duration=1.0, num_images=1)
    assert stats["requests"] == 5
    assert stats["ok"] == 2
    assert stats["status_counts"] == {"NOT_FOUND": 1, "OK": 2, "RESOURCE_EXHAUSTED": 2}
    exhausted = stats["latency_by_status"]["RESOURCE_EXHAUSTED"]
    assert exhausted["mean"] == pytest.approx(0.004)
    assert exhausted["max"] == pytest.approx(0.006)
    assert exhausted["p99"] == pytest.approx(np.percentile([0.002, 0.006], 99))
    assert set(stats["latency_by_status"]) == {"OK", "NOT_FOUND", "RESOURCE_EXHAUSTED"}


def test_throughput_counts_ok_over_the_window_and_offered_rate_counts_all_sent_over_the_send_window():
    records = [rec(i * 0.25, 0.05) for i in range(8)] + [rec(0.5, 0.01, "UNAVAILABLE")] * 2
    stats = summarize(records, duration=2.5, send_duration=2.0, num_images=3)
    assert stats["throughput"] == pytest.approx(8 / 2.5)
    assert stats["images_per_second"] == pytest.approx(3 * 8 / 2.5)
    assert stats["offered_rate"] == pytest.approx(10 / 2.0)


def test_timeline_buckets_sends_by_send_time_and_responses_by_completion_time():
    records = [
        rec(0.1, 0.2),  # sent 0, done 0
        rec(0.5, 0.7),  # sent 0, done 1
        rec(1.2, 0.1, "RESOURCE_EXHAUSTED"),  # sent 1, done 1
        rec(1.9, 0.4),  # sent 1, done 2
        rec(2.95, 0.3),  # sent 2, done 3.25: past the last bucket, counted in it
    ]
    timeline = summarize(records, duration=2.5, send_duration=2.5, num_images=1)["timeline"]
    assert [b["t"] for b in timeline] == [0, 1, 2]
    assert [b["sent"] for b in timeline] == [2, 2, 1]
    assert [b["ok"] for b in timeline] == [1, 1, 2]
    assert [b["rejected"] for b in timeline] == [0, 1, 0]
    assert timeline[0]["p50"] == pytest.approx(0.2)
    assert timeline[1]["p99"] == pytest.approx(0.7)  # the rejection's 0.1 s is not an OK latency
    assert timeline[2]["p50"] == pytest.approx(0.35)


def test_zero_ok_responses_give_null_latencies_and_zero_throughput():
    records = [rec(0.1 * i, 0.001, "NOT_FOUND") for i in range(4)]
    stats = summarize(records, duration=1.0, send_duration=1.0, num_images=1)
    assert stats["throughput"] == 0
    assert stats["images_per_second"] == 0
    assert stats["offered_rate"] == pytest.approx(4)
    for key in ("latency_mean", "latency_p50", "latency_p90", "latency_p99", "latency_max"):
        assert stats[key] is None
    assert stats["status_counts"] == {"NOT_FOUND": 4}
    assert stats["timeline"] == [{"t": 0, "sent": 4, "ok": 0, "rejected": 4, "p50": None, "p99": None}]
    assert json.loads(json.dumps(stats)) == stats  # plain JSON types throughout


def test_no_records_at_all():
    stats = summarize([], duration=1.5, send_duration=1.5, num_images=1)
    assert stats["requests"] == 0 and stats["status_counts"] == {} and stats["latency_by_status"] == {}
    assert [b["sent"] for b in stats["timeline"]] == [0, 0]


def test_report_json_has_the_settings_and_the_statistics(tmp_path: Path):
    spec = LoadSpec("127.0.0.1:1", "m", rate=20.0, duration=1.0, num_images=2, timeout_ms=500)
    stats = summarize([rec(0.1, 0.02)], duration=1.0, send_duration=1.0, num_images=2)
    report = LoadReport(spec, "2024-01-01T00:00:00+00:00", 1.0, 3, stats)
    path = report.write_json(tmp_path / "deep" / "load.json")
    data = json.loads(path.read_text())
    assert data["mode"] == "open" and data["rate"] == 20.0 and data["concurrency"] is None
    assert data["server"] == "127.0.0.1:1" and data["started_at"].startswith("2024-01-01")
    assert data["throughput"] == pytest.approx(1.0) and data["images_per_second"] == pytest.approx(2.0)
    assert "OK=1" in report.summary() and "20.0 ms" in report.summary()
    assert spec.call_timeout == pytest.approx(5.5)  # the server's deadline plus a margin


@pytest.mark.parametrize("load", [{}, {"concurrency": 2, "rate": 10.0}])
def test_spec_needs_exactly_one_of_concurrency_and_rate(load):
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec("127.0.0.1:1", "m", duration=1.0, **load)


@pytest.mark.parametrize(
    "bad", [{"concurrency": 0}, {"rate": 0.0}, {"concurrency": 1, "duration": 0}, {"concurrency": 1, "warmup": -1}]
)
def test_spec_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        LoadSpec("127.0.0.1:1", "m", **({"duration": 1.0} | bad))


def test_spec_modes():
    assert LoadSpec("h:1", "m", concurrency=4, duration=1).mode == "closed"
    assert LoadSpec("h:1", "m", rate=4, duration=1).mode == "open"
    assert LoadSpec("h:1", "m", rate=4, duration=1).call_timeout == 60.0


def test_a_short_drain_folds_into_the_last_bucket_and_a_long_one_gets_buckets_of_its_own():
    records = [rec(2.9, 0.102), rec(2.95, 3.4)]
    short = summarize(records[:1], duration=3.002, send_duration=3.0, num_images=1)["timeline"]
    assert [b["ok"] for b in short] == [0, 0, 1]
    long = summarize(records, duration=6.35, send_duration=3.0, num_images=1)["timeline"]
    assert [b["t"] for b in long] == [0, 1, 2, 3, 4, 5]
    assert [b["ok"] for b in long] == [0, 0, 0, 1, 0, 1]  # done at 3.002 and 6.35 (the rest of the window)
