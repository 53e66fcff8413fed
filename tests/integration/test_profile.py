"""``genserve profile`` end to end: it starts a real server (or reads a running one's trace), loads
it with real clients, and writes a report whose server stages account for the client's latency."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genserve.client import GenserveClient
from genserve.serving.tracing import read_trace_file

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVER_STAGES = ("queue", "compute", "step wait", "serialize", "send", "server other")
SHORT_LOAD = ("--concurrency", "4", "--duration", "2", "--warmup", "0.5")


def profile(genserve, tiny_models: Path, out: Path, *args: str) -> dict:
    result = genserve("profile", "--models", str(tiny_models), "--out", str(out), *SHORT_LOAD, *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return assert_complete_report(out, result.stdout)


def assert_complete_report(out: Path, stdout: str) -> dict:
    """Every report file exists and parses; the raw data, as profile.json holds it."""
    summary = (out / "summary.md").read_text()
    assert summary.strip() in stdout
    for section in ("## Load", "## Where the time goes", "## Batches", "## Files"):
        assert section in summary
    for png in ("stages.png", "batch_sizes.png", "timeline.png"):
        assert (out / png).read_bytes().startswith(PNG_SIGNATURE), png
        assert f"`{png}`" in summary
    events = read_trace_file(out / "trace.json")
    assert json.loads((out / "trace.json").read_text()) == events  # closed: the server stopped
    data = json.loads((out / "profile.json").read_text())
    assert {"command", "load", "stages", "calls", "batches", "batch_histogram"} <= data.keys()
    assert data["load"]["records"] and data["calls"] and data["batches"]
    return data


def stage_means(data: dict) -> dict[str, float]:
    return {row["name"]: row["mean"] for row in data["stages"]}


def assert_server_stages_account_for_the_latency(data: dict, within: float) -> None:
    """The stages' means add up to the client's mean latency, and the server's stages alone (its
    trace) explain all but ``within`` of it."""
    means = stage_means(data)
    end_to_end = means["end-to-end (client)"]
    assert end_to_end == pytest.approx(data["load"]["latency_mean"], abs=1e-6)  # the load report rounds to 1 µs
    server = sum(means[name] for name in SERVER_STAGES)
    assert server + means["client+network"] == pytest.approx(end_to_end)
    assert abs(end_to_end - server) < within * end_to_end, means
    assert all(means[name] >= 0 for name in SERVER_STAGES if name != "server other"), means


def test_profile_of_a_one_pass_model_accounts_for_the_client_latency(genserve, tiny_models: Path, tmp_path: Path):
    data = profile(genserve, tiny_models, tmp_path / "report", "--model", "dcgan-tiny")
    # A dcgan-tiny call is ~3 ms of server time; what lies outside its span (the client's Python
    # gRPC stack, loopback, the server's transport and event loop before the handler) is 0.5-1 ms
    # of it on a 2-core machine shared by client and server: 15-25% measured, not under 10%.
    assert_server_stages_account_for_the_latency(data, within=0.35)
    ok = data["load"]["status_counts"]["OK"]
    assert len(data["calls"]) == len(data["load"]["records"]) and ok > 50
    means = stage_means(data)
    assert means["compute"] > 0 and means["step wait"] == 0
    assert {b["kind"] for b in data["batches"]} == {"engine"}
    assert sum(row["batches"] for row in data["batch_histogram"]) == len(data["batches"])
    assert len({b["id"] for b in data["batches"]}) == len(data["batches"])  # each engine call once


def test_profile_of_a_diffusion_model_shows_its_steps_and_step_wait(genserve, tiny_models: Path, tmp_path: Path):
    data = profile(genserve, tiny_models, tmp_path / "report", "--model", "ddpm-tiny", "--steps", "20")
    assert_server_stages_account_for_the_latency(data, within=0.10)
    means = stage_means(data)
    assert means["compute"] > means["queue"] and means["step wait"] > 0
    assert {b["kind"] for b in data["batches"]} == {"step"}
    for call in data["calls"]:
        assert [s["args"]["step"] for s in call["stages"] if s["name"] == "step"] == list(range(20))
    assert max(b["batch_size"] for b in data["batches"]) > 1  # concurrent requests shared steps


def test_engine_profile_writes_onnxruntime_json_and_py_spy_is_reported(genserve, tiny_models: Path, tmp_path: Path):
    out = tmp_path / "report"
    data = profile(genserve, tiny_models, out, "--model", "dcgan-tiny", "--engine-profile", "--py-spy")
    engine = sorted((out / "engine").glob("onnxruntime-dcgan-tiny-*.json"))
    assert engine, sorted((out / "engine").iterdir())
    ops = json.loads(engine[0].read_text())
    assert any(e.get("cat") == "Node" for e in ops), "one event per operator run"
    summary = (out / "summary.md").read_text()
    assert f"`engine/{engine[0].name}`" in summary
    if shutil.which("py-spy") is None:
        assert "py-spy was not installed" in summary and "pip install py-spy" in summary
    else:
        assert (out / "pyspy.json").is_file() or "py-spy exited" in summary
    assert data["load"]["status_counts"]["OK"] > 0


def test_profile_of_a_running_server_reads_its_trace_file(genserve, start_server, tmp_path: Path):
    trace = tmp_path / "server-trace.json"
    server = start_server("--trace-file", str(trace)).wait_until_serving()
    out = tmp_path / "report"
    args = ("--server", server.target, "--server-trace-file", str(trace), "--model", "dcgan-tiny", "--out", str(out))
    result = genserve("profile", *args, *SHORT_LOAD, timeout=120)
    assert result.returncode == 0, result.stderr
    data = assert_complete_report(out, result.stdout)
    assert server.proc.poll() is None, "a running server is left running"
    assert abs(len(data["calls"]) - len(data["load"]["records"])) <= 0.05 * len(data["load"]["records"])
    assert f"`{server.target}`" in (out / "summary.md").read_text()


def test_profile_refuses_a_report_folder_that_is_not_empty(genserve, tmp_path: Path):
    (tmp_path / "old.txt").write_text("keep me")
    result = genserve("profile", "--model", "dcgan-tiny", "--out", str(tmp_path))
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_serve_engine_profile_on_the_torch_backend_records_the_worker_threads(start_server, tiny_models, tmp_path):
    models, profiles = tmp_path / "models", tmp_path / "engine"
    shutil.copytree(tiny_models / "dcgan-tiny", models / "dcgan-tiny")  # a model with weights/ for torch
    server = start_server("--backend", "torch", "--engine-profile", str(profiles), models=models)
    with GenserveClient(server.wait_until_serving().target) as client:
        client.generate("dcgan-tiny", 2, seed=1)
    server.stop()
    assert server.wait(30) == 0
    (trace,) = profiles.glob("torch-*.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "aten::conv_transpose2d" for e in events), "the engine call, on a worker thread"
