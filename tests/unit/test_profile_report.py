"""The profile report's computations on synthetic trace events: stages, percentiles, batches, tables."""

from __future__ import annotations

import json

import pytest

from genserve import profile
from genserve.profile import Call

T0 = 1_700_000_000.0  # s, a Unix time: the trace's clock
METHOD = "/genserve.v1.GenerationService/Generate"


def call_event(tid: int, start_ms: float, dur_ms: float, model: str = "m", status: str = "OK") -> dict:
    args = {"genserve.model": model, "genserve.request_id": f"r{tid}", "rpc.grpc.status_code": status}
    return {"name": METHOD, "cat": "call", "ph": "X", "pid": 1, "tid": tid, "ts": (T0 + start_ms / 1e3) * 1e6,
            "dur": dur_ms * 1e3, "args": args}  # fmt: skip


def stage_event(tid: int, name: str, start_ms: float, dur_ms: float, **args) -> dict:
    return {"name": name, "cat": "stage", "ph": "X", "pid": 1, "tid": tid, "ts": (T0 + start_ms / 1e3) * 1e6,
            "dur": dur_ms * 1e3, "args": args}  # fmt: skip


def diffusion_call(tid: int, start_ms: float, batches: list[int]) -> list[dict]:
    """A 3-step call: 2 ms queue, steps of 4 ms with 1 ms between them, 0.5 ms serialize, 1 ms send."""
    events = [call_event(tid, start_ms, 20.0), stage_event(tid, "queue", start_ms + 0.2, 2.0)]
    t = start_ms + 2.2
    for step, batch in enumerate(batches):
        events.append(stage_event(tid, "step", t, 4.0, step=step, of=3, batch=batch, batch_size=2, requests=2))
        t += 5.0
    events.append(stage_event(tid, "serialize", t, 0.5))
    events.append(stage_event(tid, "send", t + 0.5, 1.0))
    return events


def test_stages_join_their_call_by_track_whatever_order_they_were_written_in():
    events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "genserve"}}]
    events += list(reversed(diffusion_call(1, 0.0, [7, 8, 9]))) + diffusion_call(2, 1.0, [7, 8, 9])
    calls = profile.calls_from_events(events)
    assert [c.request_id for c in calls] == ["r1", "r2"]
    assert [s.name for s in calls[0].stages] == ["queue", "step", "step", "step", "serialize", "send"]
    assert calls[0].start == pytest.approx(T0) and calls[0].duration == pytest.approx(0.020)
    assert calls[0].model == "m" and calls[0].status == "OK" and calls[0].track == 1


def test_breakdown_splits_a_diffusion_call_into_stages_that_add_up_to_its_span():
    (call,) = profile.calls_from_events(diffusion_call(1, 0.0, [7, 8, 9]))
    parts = profile.breakdown(call)
    assert parts["queue"] == pytest.approx(0.002)
    assert parts["compute"] == pytest.approx(0.012)  # 3 steps of 4 ms
    # Unix times in float seconds resolve ~0.25 µs, as the trace file's microseconds do.
    assert parts["step wait"] == pytest.approx(0.002, abs=1e-6)  # two 1 ms gaps between them
    assert parts["serialize"] == pytest.approx(0.0005) and parts["send"] == pytest.approx(0.001)
    assert parts["server other"] == pytest.approx(0.020 - 0.0175, abs=1e-6)
    assert sum(parts.values()) == pytest.approx(call.duration)


def test_a_single_engine_call_has_no_step_wait_even_at_unix_times():
    events = [call_event(1, 0.0, 5.0), stage_event(1, "engine", 1.0, 3.0, batch=0, batch_size=4, requests=2)]
    (call,) = profile.calls_from_events(events)
    assert profile.breakdown(call)["step wait"] == 0.0
    assert profile.breakdown(call)["compute"] == pytest.approx(0.003)


def test_a_call_without_stages_is_all_server_other():
    (call,) = profile.calls_from_events([call_event(1, 0.0, 2.0)])
    parts = profile.breakdown(call)
    assert parts["server other"] == pytest.approx(0.002)
    assert all(parts[name] == 0 for name in profile.SERVER_STAGES if name != "server other")


def test_each_batch_is_counted_once_however_many_calls_shared_it():
    events = diffusion_call(1, 0.0, [7, 8, 9]) + diffusion_call(2, 5.0, [8, 9, 10])
    batches = profile.batches_of(profile.calls_from_events(events))
    assert [b.id for b in batches] == [7, 8, 9, 10]
    assert all(b.kind == "step" and b.batch_size == 2 and b.requests == 2 for b in batches)
    assert profile.batch_histogram(batches) == [(2, 4)]


def test_batches_of_different_models_never_merge_on_equal_ids():
    events = [call_event(1, 0.0, 5.0, model="a"), stage_event(1, "engine", 1.0, 1.0, batch=0, batch_size=1, requests=1)]
    events += [
        call_event(2, 0.0, 5.0, model="b"),
        stage_event(2, "engine", 1.0, 1.0, batch=0, batch_size=3, requests=1),
    ]
    batches = profile.batches_of(profile.calls_from_events(events))
    assert sorted((b.model, b.batch_size) for b in batches) == [("a", 1), ("b", 3)]
    assert profile.batch_histogram(batches) == [(1, 1), (3, 1)]


def test_stage_table_means_add_up_to_the_client_mean_and_client_network_is_the_rest():
    calls = profile.calls_from_events(diffusion_call(1, 0.0, [1, 2, 3]) + diffusion_call(2, 30.0, [4, 5, 6]))
    client = [0.022, 0.024]  # s: 3 ms on average beyond the 20 ms spans
    rows = {row.name: row for row in profile.stage_table(calls, client)}
    assert rows["client+network"].mean == pytest.approx(0.003)
    assert rows["client+network"].p50 is None  # not paired: means only
    total = sum(rows[name].mean for name in (*profile.SERVER_STAGES, "client+network"))
    assert total == pytest.approx(rows["end-to-end (client)"].mean) == pytest.approx(0.023)
    assert rows["end-to-end (client)"].p50 == pytest.approx(0.023)
    assert rows["compute"].p99 == pytest.approx(0.012)


def test_stage_table_without_calls_has_no_numbers():
    rows = profile.stage_table([], [])
    assert all(row.mean is None for row in rows)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([1.0, 2.0, 3.0, 4.0], 100, 4.0), ([5.0], 99, 5.0), ([], 50, None)],
)
def test_percentile_interpolates_linearly_and_is_none_without_values(values, q, expected):
    assert profile.percentile(values, q) == expected


def test_calls_at_percentiles_are_real_calls_by_nearest_rank():
    calls = [Call(METHOD, "m", str(i), "OK", T0 + i, duration=(i + 1) / 1000) for i in range(100)]
    picked = profile.calls_at_percentiles(calls)
    assert [(q, c.request_id) for q, c in picked] == [(50, "49"), (90, "89"), (99, "98")]
    assert profile.calls_at_percentiles([]) == []


def test_in_window_keeps_the_model_and_method_that_started_in_the_window():
    calls = [
        Call(METHOD, "m", "early", "OK", T0 - 0.1, 0.01),
        Call(METHOD, "m", "in", "OK", T0 + 0.5, 0.01),
        Call(METHOD, "other", "other model", "OK", T0 + 0.5, 0.01),
        Call("/genserve.v1.GenerationService/ListModels", "m", "other method", "OK", T0 + 0.5, 0.01),
        Call(METHOD, "m", "late", "OK", T0 + 1.0, 0.01),
    ]
    assert [c.request_id for c in profile.in_window(calls, T0, T0 + 1.0, "m")] == ["in"]


def test_load_calls_skip_the_warmup_and_count_the_window():
    calls = [Call(METHOD, "m", str(i), "OK", T0 + i, 0.01) for i in range(10)]
    calls.append(Call(METHOD, "m", "before", "OK", T0 - 5, 0.01))
    window = profile.load_calls(sorted(calls, key=lambda c: c.start), "m", T0, skip=3, count=4)
    assert [c.request_id for c in window] == ["3", "4", "5", "6"]


def test_markdown_tables_align_numbers_right():
    table = profile.markdown_table(["stage", "mean ms"], [["queue", "1.00"]])
    assert table.splitlines() == ["| stage | mean ms |", "| :--- | ---: |", "| queue | 1.00 |"]
    hist = profile.histogram_markdown([(1, 3), (4, 1)])
    assert "| 1 | 3 | 75.0% |" in hist and "| 4 | 1 | 25.0% |" in hist


def test_stage_markdown_shows_ms_and_shares_of_the_end_to_end_mean():
    rows = [profile.StageRow("queue", 0.001, 0.001, 0.002, 0.003), profile.StageRow("client+network", 0.001)]
    rows.append(profile.StageRow("end-to-end (client)", 0.004, 0.004, 0.005, 0.006))
    text = profile.stage_markdown(rows)
    assert "| queue | 1.00 | 1.00 | 2.00 | 3.00 | 25.0% |" in text
    assert "| client+network | 1.00 | – | – | – | 25.0% |" in text
    assert "| **end-to-end (client)** | 4.00 |" in text


def test_the_profile_json_and_summary_hold_the_raw_data(tmp_path):
    calls = profile.calls_from_events(diffusion_call(1, 0.0, [1, 2, 3]))
    load = {"model": "m", "mode": "closed", "concurrency": 2, "rate": None, "steps": 3, "warmup": 1.0,
            "send_duration": 2.0, "requests": 1, "status_counts": {"OK": 1}, "throughput": 0.5,
            "images_per_second": 0.5, "latency_mean": 0.022, "latency_p50": 0.022, "latency_p90": 0.022,
            "latency_p99": 0.022, "latency_max": 0.022,
            "records": [{"sent": 0.0, "latency": 0.022, "status": "OK"}]}  # fmt: skip
    result = profile.Profile("genserve profile --model m", load, [0.022], (T0, T0 + 2), calls, "a test server")
    data = json.loads(json.dumps(result.to_dict(), default=str))
    assert data["calls"][0]["stages"][0] == {"name": "queue", "start": 0.0002, "duration": 0.002, "args": {}}
    assert data["calls"][0]["breakdown"]["step wait"] == pytest.approx(0.002, abs=1e-6)
    assert [b["id"] for b in data["batches"]] == [1, 2, 3]
    summary = result.summary_markdown()
    assert "closed loop, concurrency 2, 3 steps" in summary and "| 2 | 3 | 100.0% |" in summary
    assert "**0.5 requests/s**" in summary


def test_engine_profile_is_a_server_option_in_toml_and_on_the_command_line(tmp_path):
    from genserve.serving.config import load_config

    config = tmp_path / "server.toml"
    config.write_text('[server]\nmodels = "models"\nengine_profile = "prof"\n')
    assert load_config(config).engine.engine_profile == tmp_path / "prof"
    flagged = load_config(config, {"engine": {"engine_profile": tmp_path / "flag"}})
    assert flagged.engine.engine_profile == tmp_path / "flag"
    assert load_config(None, default_models_dir=tmp_path).engine.engine_profile is None
