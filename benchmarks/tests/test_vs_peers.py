"""The peer benchmark's bookkeeping (order, statistics, ratios, goal verdicts, table, parity), its
closed loop on a fake client, the peer launcher's stop, and, where a peer's environment exists, a
short parity smoke test of that peer against a real genserve server."""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import grpc
import numpy as np
import pytest

from benchmarks import vs_peers
from benchmarks.peers import clients, launch
from benchmarks.serverproc import start_server
from genserve.loadgen import OK, RequestRecord


def run(server: str, model: str, c: int, throughput: float, p99_ms: float, repeat: int = 1) -> dict:
    return {
        "server": server,
        "model": model,
        "concurrency": c,
        "repeat": repeat,
        "throughput": throughput,
        "p50_ms": p99_ms / 2,
        "p99_ms": p99_ms,
    }


def report_of(runs: list[dict], models: list[str]) -> dict:
    by = vs_peers.medians(runs)
    ratios = vs_peers.ratios(by)
    verdicts = vs_peers.verdicts(ratios, models)
    return {"settings": {"models": models}, "runs": runs, "ratios": ratios, "verdicts": verdicts}


def test_each_repeat_starts_with_the_next_server_so_every_server_goes_first_once():
    servers = ["genserve", "triton", "ray", "torchserve"]
    orders = [vs_peers.rotated(servers, r) for r in range(1, 5)]
    assert orders[0] == servers
    assert orders[1] == ["triton", "ray", "torchserve", "genserve"]
    assert sorted(o[0] for o in orders) == sorted(servers)
    assert all(sorted(o) == sorted(servers) for o in orders)


def test_a_run_counts_ok_responses_over_its_window_and_reports_milliseconds():
    records = [RequestRecord(0.1 * i, 0.010, OK) for i in range(9)] + [RequestRecord(0.95, 0.5, "UNAVAILABLE")]
    r = vs_peers.to_run("ray", "dcgan-mnist", 4, 2, 1, records, window_s=1.0, send_s=1.0, warmup_requests=3)
    assert r.throughput == 9.0
    assert r.p99_ms == pytest.approx(10.0)
    assert r.statuses == {OK: 9, "UNAVAILABLE": 1}
    assert (r.requests, r.ok, r.repeat, r.position, r.warmup_requests) == (10, 9, 2, 1, 3)


def test_a_run_without_any_ok_response_has_no_latency_rather_than_failing():
    r = vs_peers.to_run("ray", "dcgan-mnist", 1, 1, 0, [RequestRecord(0.0, 0.1, "INTERNAL")], 1.0, 1.0, 0)
    assert r.throughput == 0 and math.isnan(r.p99_ms)


def test_repeats_are_compared_by_their_medians_and_ratios_are_genserve_over_each_peer():
    runs = [
        run("genserve", "dcgan-mnist", 16, 900.0, 20.0, 1),
        run("genserve", "dcgan-mnist", 16, 1500.0, 10.0, 2),  # outliers each way: the medians ignore them
        run("genserve", "dcgan-mnist", 16, 960.0, 24.0, 3),
        run("triton", "dcgan-mnist", 16, 600.0, 40.0, 1),
        run("triton", "dcgan-mnist", 16, 200.0, 90.0, 2),
        run("triton", "dcgan-mnist", 16, 640.0, 30.0, 3),
        run("ray", "dcgan-mnist", 16, 480.0, 80.0),
        run("ray", "dcgan-mnist", 64, 500.0, 90.0),  # no genserve run at 64: no ratio
    ]
    by = vs_peers.medians(runs)
    assert by[("genserve", "dcgan-mnist", 16)] == {"throughput": 960.0, "p50_ms": 10.0, "p99_ms": 20.0, "repeats": 3}
    assert vs_peers.ratios(by) == {
        "triton": {"dcgan-mnist": {"16": {"throughput_ratio": 1.6, "p99_ratio": 0.5}}},
        "ray": {"dcgan-mnist": {"16": {"throughput_ratio": 2.0, "p99_ratio": 0.25}}},
    }


def test_the_goal_is_met_only_when_both_ratios_hold_on_every_model_at_concurrency_16():
    models = ["dcgan-mnist", "ddpm-mnist"]
    ratios = {
        "triton": {  # met on both
            "dcgan-mnist": {"16": {"throughput_ratio": 1.5, "p99_ratio": 0.7}},
            "ddpm-mnist": {"16": {"throughput_ratio": 2.0, "p99_ratio": 0.5}},
        },
        "ray": {  # the throughput misses on one model
            "dcgan-mnist": {"16": {"throughput_ratio": 3.0, "p99_ratio": 0.2}},
            "ddpm-mnist": {"16": {"throughput_ratio": 1.49, "p99_ratio": 0.5}},
        },
        "torchserve": {  # the p99 misses
            "dcgan-mnist": {"16": {"throughput_ratio": 1.6, "p99_ratio": 0.71}},
            "ddpm-mnist": {"16": {"throughput_ratio": 1.6, "p99_ratio": 0.6}},
        },
    }
    v = vs_peers.verdicts(ratios, models)
    assert v["triton"]["met"] is True
    assert v["ray"]["met"] is False and v["ray"]["models"]["dcgan-mnist"]["met"] is True
    assert v["torchserve"]["met"] is False and v["torchserve"]["models"]["dcgan-mnist"]["met"] is False


def test_a_goal_not_measured_at_16_is_neither_met_nor_missed():
    ratios = {"triton": {"dcgan-mnist": {"1": {"throughput_ratio": 3.0, "p99_ratio": 0.1}}}}
    v = vs_peers.verdicts(ratios, ["dcgan-mnist", "ddpm-mnist"])
    assert v["triton"]["met"] is None
    assert v["triton"]["models"]["ddpm-mnist"] == {"met": None}


def test_the_table_lists_each_peer_per_model_and_concurrency_and_states_the_goal_per_peer():
    runs = [
        run("genserve", "dcgan-mnist", 16, 900.0, 20.0),
        run("triton", "dcgan-mnist", 16, 600.0, 40.0),
        run("torchserve", "dcgan-mnist", 16, 800.0, 25.0),
        run("genserve", "dcgan-mnist", 1, 500.0, 2.0),
        run("triton", "dcgan-mnist", 1, 250.0, 4.0),
    ]
    table = vs_peers.markdown_table(report_of(runs, ["dcgan-mnist"]))
    assert "| dcgan-mnist | 16 | Triton | 900.0 | 600.0 | 1.50× | 20.00 | 40.00 | 0.50× |" in table
    assert "| dcgan-mnist | 16 | TorchServe | 900.0 | 800.0 | 1.12× | 20.00 | 25.00 | 0.80× |" in table
    assert "| dcgan-mnist | 1 | Triton | 500.0 | 250.0 | 2.00× | 2.00 | 4.00 | 0.50× |" in table
    assert "| Triton | 1.50× req/s, 0.50× p99 | met |" in table
    assert "| TorchServe | 1.12× req/s, 0.80× p99 | missed |" in table
    assert "genserve's throughput ≥ 1.5× the peer's and its p99 ≤ 0.7× the peer's" in table


def test_parity_accepts_equal_bytes_or_one_grey_level_and_nothing_further():
    a = np.zeros((2, 28, 28, 1), np.uint8)
    assert vs_peers.parity(a, a.copy()) == {"identical": True, "max_abs_diff": 0}
    one_off = a.copy()
    one_off[0, 3, 4, 0] = 1
    assert vs_peers.within_parity(vs_peers.parity(a, one_off))
    assert not vs_peers.parity(a, one_off)["identical"]
    two_off = a.copy()
    two_off[1, 0, 0, 0] = 2
    assert not vs_peers.within_parity(vs_peers.parity(a, two_off))
    assert not vs_peers.within_parity(vs_peers.parity(a, a[:1]))


class FakeClient:
    """Answers each call after ``latency`` s; seeds divisible by 5 fail with UNAVAILABLE."""

    def __init__(self, latency: float):
        self.latency = latency
        self.seeds: list[int] = []

    async def generate(self, model, seed, steps, call=0, timeout=120.0):
        self.seeds.append(seed)
        await asyncio.sleep(self.latency)
        if seed % 5 == 0:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return np.zeros((1, 1, 1), np.uint8)


def test_the_closed_loop_keeps_n_requests_out_counts_only_the_window_and_records_failures():
    client = FakeClient(latency=0.02)
    seen = asyncio.run(vs_peers.closed_loop(client, "m", None, 4, warmup_s=0.1, window_s=0.2))
    assert len(set(client.seeds)) == len(client.seeds)  # a distinct seed per request
    assert seen.warmup_requests > 0 and len(seen.records) + seen.warmup_requests == len(client.seeds)
    assert all(r.sent >= 0 for r in seen.records)
    assert {r.status for r in seen.records} == {OK, "UNAVAILABLE"}
    assert seen.send_s == pytest.approx(0.2) and seen.window_s >= 0.2
    assert 4 * 0.2 / 0.02 * 0.25 < len(seen.records) <= 4 * (0.2 / 0.02 + 1)  # about 4 in flight all along


def test_a_request_longer_than_the_warmup_and_window_still_completes_several_times_per_worker():
    client = FakeClient(latency=0.1)
    seen = asyncio.run(vs_peers.closed_loop(client, "m", None, 3, warmup_s=0.01, window_s=0.05))
    assert seen.warmup_requests >= 3  # the window opened only after every worker's first response
    assert seen.send_s >= vs_peers.WINDOW_LATENCIES * 0.1
    assert len(seen.records) >= 3 * (vs_peers.WINDOW_LATENCIES - 1)


def test_torchserve_batches_like_the_others_with_one_worker_per_model():
    config = launch.torchserve_config("dcgan-mnist", 64, 1, threads=2)
    assert (config["batchSize"], config["maxBatchDelay"], config["minWorkers"], config["maxWorkers"]) == (64, 1, 1, 1)
    assert Path(config["genserve"]["folder"]).name == "dcgan-mnist"
    assert config["genserve"]["threads"] == 2


def test_stopping_a_peer_ends_the_processes_it_started():
    script = "sleep 300 & echo $! > child.pid; echo ready; wait"
    with tempfile.TemporaryDirectory() as tmp:
        peer = launch.PeerProcess("fake", ["bash", "-c", script], 0, "ready", cwd=Path(tmp), timeout=10)
        child = int((Path(tmp) / "child.pid").read_text())
        peer.stop(timeout=5)
    assert peer.proc.returncode is not None
    deadline = time.monotonic() + 5  # SIGKILL is delivered, and the orphan reaped, asynchronously
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


# ---- parity smoke tests: each peer against a real genserve server, where the peer is installed ----


def _missing(peer: str) -> str | None:
    try:
        launch.require(peer)
    except launch.NotInstalled as exc:
        return str(exc)
    if peer == "torchserve" and shutil.which("java") is None:
        return "torchserve needs a Java runtime: run `bash benchmarks/peers/setup.sh torchserve` first"
    return None


@pytest.mark.parametrize("peer", ["triton", "ray", "torchserve"])
def test_a_peer_returns_genserves_images_for_the_same_seeds(peer: str, tmp_path: Path):
    reason = _missing(peer)
    if reason:
        pytest.skip(reason)
    models, seeds = ["dcgan-mnist", "ddpm-mnist"], [0, 1, 2]
    steps = {"dcgan-mnist": None, "ddpm-mnist": 2}  # a short diffusion: the same math, fewer steps
    shapes = {m: (28, 28, 1) for m in models}
    stubs = clients.generate_stubs(tmp_path / "stubs")
    genserve = start_server("--max-batch-size", "64")
    server = None
    try:
        if peer == "triton":
            server = launch.triton(models, 64, 0)
        elif peer == "ray":
            server = launch.ray(models, 64, 0, stubs, tmp_path)
        else:
            server = launch.torchserve(models, 64, 1, tmp_path)

        async def compare() -> dict:
            ours = clients.client("genserve", genserve.target, shapes, stubs)
            theirs = clients.client(peer, server.target, shapes, stubs)
            try:
                await vs_peers.wait_serving(theirs, models, steps, vs_peers.READY_TIMEOUT)
                return {
                    m: vs_peers.parity(await ours.images(m, seeds, steps[m]), await theirs.images(m, seeds, steps[m]))
                    for m in models
                }
            finally:
                await ours.close()
                await theirs.close()

        results = asyncio.run(compare())
    finally:
        genserve.stop()
        if server is not None:
            server.stop()
    assert all(vs_peers.within_parity(r) for r in results.values()), results


def test_a_run_folder_holds_the_report_csvs_table_plot_and_peer_logs(tmp_path: Path):
    records = [RequestRecord(0.01 * i, 0.002, OK) for i in range(50)]
    runs = [
        asdict(vs_peers.to_run(server, "dcgan-mnist", 16, 1, i, records, 1.0, 1.0, 0))
        for i, server in enumerate(["genserve", "triton"])
    ]
    report = report_of(runs, ["dcgan-mnist"])
    report["settings"] |= {"servers": ["genserve", "triton"], "quick": True, "concurrency": [16]}
    table = vs_peers.write_folder(tmp_path, report, {"triton": ["serving\n"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "logs",
        "medians.csv",
        "plot.png",
        "report.json",
        "runs.csv",
        "table.md",
    ]
    assert (tmp_path / "table.md").read_text() == table
    assert (tmp_path / "runs.csv").read_text().count("\n") == 3
    assert (tmp_path / "logs" / "triton.log").read_text() == "serving\n"
