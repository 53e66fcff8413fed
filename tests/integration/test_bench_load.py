"""``genserve bench load`` against a real server: closed and open loop, JSON and plot outputs."""

from __future__ import annotations

import json
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench_load(genserve, server, tmp_path: Path, *args: str) -> dict:
    out, plot = tmp_path / "out" / "load.json", tmp_path / "load.png"
    result = genserve(
        "bench", "load", "--server", server.target, "--json", str(out), "--plot", str(plot), *args, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and str(plot) in result.stdout
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    return json.loads(out.read_text())


def assert_sane(report: dict) -> None:
    assert report["requests"] > 0
    assert report["status_counts"].get("OK", 0) > 0
    assert report["throughput"] > 0
    assert report["latency_p50"] <= report["latency_p90"] <= report["latency_p99"] <= report["latency_max"]
    assert report["duration"] >= 2.0
    assert sum(report["status_counts"].values()) == report["requests"]
    assert sum(b["sent"] for b in report["timeline"]) == report["requests"]
    assert sum(b["ok"] for b in report["timeline"]) == report["status_counts"]["OK"]
    assert report["started_at"].endswith("+00:00")


def test_closed_loop(genserve, server, tmp_path: Path):
    report = bench_load(
        genserve, server, tmp_path, "--model", "dcgan-tiny", "--concurrency", "4", "--duration", "2", "--warmup", "0.5"
    )
    assert report["mode"] == "closed" and report["concurrency"] == 4 and report["rate"] is None
    assert report["model"] == "dcgan-tiny" and report["num_images"] == 1
    assert report["warmup_requests"] > 0
    assert_sane(report)


def test_open_loop(genserve, server, tmp_path: Path):
    report = bench_load(genserve, server, tmp_path, "--model", "dcgan-tiny", "--rate", "50", "--duration", "2")
    assert report["mode"] == "open" and report["rate"] == 50 and report["concurrency"] is None
    assert_sane(report)
    assert 20 < report["offered_rate"] < 100  # Poisson at 50/s over 2 s (seeded)


def test_an_unknown_model_is_reported_as_not_found(genserve, server, tmp_path: Path):
    result = genserve(
        "bench", "load", "--server", server.target, "--model", "no-such-model", "--concurrency", "2",
        "--duration", "0.5", "--warmup", "0", "--json", str(tmp_path / "nf.json"), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "nf.json").read_text())
    assert report["requests"] > 0
    assert report["status_counts"] == {"NOT_FOUND": report["requests"]}
    assert report["latency_p50"] is None and report["throughput"] == 0
    assert "NOT_FOUND=" in result.stdout


def test_concurrency_and_rate_are_mutually_exclusive(genserve, server):
    result = genserve(
        "bench", "load", "--server", server.target, "--model", "dcgan-tiny", "--concurrency", "2", "--rate", "5",
        "--duration", "1", timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not allowed with" in result.stderr
