"""Where a model's request time goes: a load run's client latencies and the server's traces of the
same calls, turned into a report folder (``genserve profile``).

Each traced call (``serving/tracing.py``: one "call" event, its "stage" events on the same track)
splits into stages that add up to its span:

- ``queue``: arrival in the scheduler until its first batch;
- ``compute``: the engine calls (one-pass models) or diffusion steps it took part in;
- ``step wait``: the gaps between those, i.e. the engine phase's span minus compute (a diffusion
  request waits while the batch is rebuilt between steps);
- ``serialize``: encoding the response; ``send``: the handler returned until the transport reports
  the call done;
- ``server other``: the call's span minus all of the above (parsing, admission, the event loop).

``client+network`` is what the client measured beyond the server's span: the client's own gRPC
stack and event loop, the connection, and the server's transport and event loop before the
handler runs (the span starts there), which grows with load on a busy event loop. It is the
client's mean latency minus the mean call span. The calls are not paired one to one (the load
generator sends no request ids), so that stage exists for means only; the means of all seven add
up to the end-to-end mean by construction.

Everything here but ``write_report`` and the plots is a pure function of trace events and load
records, tested on synthetic events (tests/unit/test_profile.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QUEUE, COMPUTE, STEP_WAIT, SERIALIZE, SEND, SERVER_OTHER = (
    "queue",
    "compute",
    "step wait",
    "serialize",
    "send",
    "server other",
)
SERVER_STAGES = (QUEUE, COMPUTE, STEP_WAIT, SERIALIZE, SEND, SERVER_OTHER)
CLIENT_NETWORK = "client+network"
END_TO_END = "end-to-end (client)"
ENGINE_STAGES = ("engine", "step")  # one-pass engine calls, diffusion steps
PERCENTILES = (50, 90, 99)
GENERATE = "/Generate"  # the load generator's method (its suffix: the package may vary)


@dataclass(frozen=True)
class Stage:
    name: str
    start: float  # s, Unix time (the trace's clock)
    duration: float  # s
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Call:
    """One traced call and its stages, in start order."""

    method: str
    model: str
    request_id: str
    status: str
    start: float  # s, Unix time
    duration: float  # s
    stages: tuple[Stage, ...] = ()
    track: int = 0  # the trace file's tid: the call's events are the ones on it

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Batch:
    """One engine call or diffusion step, as the traced calls in it saw it."""

    model: str
    kind: str  # "engine" or "step"
    id: int  # the scheduler's number (per model)
    start: float  # s, Unix time
    duration: float  # s
    batch_size: int  # images (one-pass) or image slots (diffusion)
    requests: int


# --- from trace events ---------------------------------------------------------------------------


def calls_from_events(events: Iterable[dict[str, Any]]) -> list[Call]:
    """The calls of a Chrome-trace file (``tracing.read_trace_file``), by start time; stage events
    join the call on their track (``tid``), whatever order they were written in."""
    heads: dict[int, dict[str, Any]] = {}
    stages: dict[int, list[Stage]] = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        if e.get("cat") == "call":
            heads[e["tid"]] = e
        elif e.get("cat") == "stage":
            stages.setdefault(e["tid"], []).append(
                Stage(e["name"], e["ts"] / 1e6, e["dur"] / 1e6, dict(e.get("args") or {}))
            )
    out = []
    for tid, e in heads.items():
        args = e.get("args") or {}
        out.append(
            Call(
                method=e["name"],
                model=str(args.get("genserve.model", "")),
                request_id=str(args.get("genserve.request_id", "")),
                status=str(args.get("rpc.grpc.status_code", "")),
                start=e["ts"] / 1e6,
                duration=e["dur"] / 1e6,
                stages=tuple(sorted(stages.get(tid, ()), key=lambda s: s.start)),
                track=tid,
            )
        )
    return sorted(out, key=lambda c: c.start)


def in_window(calls: Iterable[Call], start: float, end: float, model: str, method: str = GENERATE) -> list[Call]:
    """The calls of ``model``'s ``method`` (a suffix) that reached the server in [start, end)."""
    return [c for c in calls if c.model == model and c.method.endswith(method) and start <= c.start < end]


def load_calls(calls: Iterable[Call], model: str, after: float, skip: int, count: int) -> list[Call]:
    """The window of a load on a server that only it loads: of ``model``'s calls that reached the
    server from ``after`` on (Unix s), in arrival order, the ``count`` past the first ``skip`` (the
    warmup's). Counting, not clocks: the client's window start is on its own clock."""
    ordered = [c for c in calls if c.model == model and c.method.endswith(GENERATE) and c.start >= after]
    return ordered[skip : skip + count]


def breakdown(call: Call) -> dict[str, float]:
    """The call's server stages (s), adding up to its span (``server other`` takes the rest, and may
    be slightly negative when the stages' clocks overlap it by a few microseconds)."""

    def total(name: str) -> float:
        return sum(s.duration for s in call.stages if s.name == name)

    engine = [s for s in call.stages if s.name in ENGINE_STAGES]
    compute = sum(s.duration for s in engine)
    first = min((s.start for s in engine), default=0.0)
    span = max(((s.start - first) + s.duration for s in engine), default=0.0)  # relative: Unix times lose µs
    out = {
        QUEUE: total("queue"),
        COMPUTE: compute,
        STEP_WAIT: max(0.0, span - compute),  # engine calls that overlap (several instances) wait for none
        SERIALIZE: total("serialize"),
        SEND: total("send"),
    }
    out[SERVER_OTHER] = call.duration - sum(out.values())
    return out


def batches_of(calls: Iterable[Call]) -> list[Batch]:
    """Every engine call and step the calls took part in, once each (by model, kind and batch id),
    by start time."""
    seen: dict[tuple[str, str, int], Batch] = {}
    for call in calls:
        for s in call.stages:
            if s.name in ENGINE_STAGES and "batch" in s.args:
                key = (call.model, s.name, int(s.args["batch"]))
                if key not in seen:
                    size, requests = int(s.args.get("batch_size", 0)), int(s.args.get("requests", 0))
                    seen[key] = Batch(call.model, s.name, key[2], s.start, s.duration, size, requests)
    return sorted(seen.values(), key=lambda b: b.start)


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, NumPy's default); None without values."""
    return float(np.percentile(values, q)) if len(values) else None


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


@dataclass(frozen=True)
class StageRow:
    name: str
    mean: float | None  # s
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


def stage_table(calls: Sequence[Call], client_latencies: Sequence[float]) -> list[StageRow]:
    """The breakdown: each server stage over ``calls`` (mean and percentiles), ``client+network``
    (means only: the client's mean latency minus the mean call span) and the client's end-to-end
    latency. The means of the stages add up to the end-to-end mean."""
    parts = [breakdown(c) for c in calls]
    rows = []
    for name in SERVER_STAGES:
        values = [p[name] for p in parts]
        rows.append(StageRow(name, mean(values), *(percentile(values, q) for q in PERCENTILES)))
    span, client = mean([c.duration for c in calls]), mean(client_latencies)
    rows.append(StageRow(CLIENT_NETWORK, None if span is None or client is None else client - span))
    rows.append(StageRow(END_TO_END, client, *(percentile(client_latencies, q) for q in PERCENTILES)))
    return rows


def calls_at_percentiles(calls: Sequence[Call], qs: Sequence[float] = PERCENTILES) -> list[tuple[float, Call]]:
    """For each ``q``, the call at that percentile of the call span (nearest rank: a real call)."""
    ranked = sorted(calls, key=lambda c: c.duration)
    if not ranked:
        return []
    return [(q, ranked[min(len(ranked) - 1, max(0, math.ceil(q / 100 * len(ranked)) - 1))]) for q in qs]


def batch_histogram(batches: Iterable[Batch]) -> list[tuple[int, int]]:
    """(batch size, number of batches of that size), by size."""
    return sorted(Counter(b.batch_size for b in batches).items())


# --- rendering -----------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; ``align``: one of "l", "r" per column (default: first left,
    the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.2f}"


def stage_markdown(rows: Sequence[StageRow]) -> str:
    """The breakdown as a table in ms, with each stage's share of the end-to-end mean."""
    total = rows[-1].mean if rows and rows[-1].name == END_TO_END else None

    def share(row: StageRow) -> str:
        return "–" if row.mean is None or not total else f"{100 * row.mean / total:.1f}%"

    body = []
    for row in rows:
        name = f"**{row.name}**" if row.name == END_TO_END else row.name
        body.append([name, ms(row.mean), ms(row.p50), ms(row.p90), ms(row.p99), share(row)])
    return markdown_table(["stage", "mean ms", "p50 ms", "p90 ms", "p99 ms", "share of mean"], body)


def histogram_markdown(histogram: Sequence[tuple[int, int]]) -> str:
    n = sum(count for _, count in histogram)
    rows = [[size, count, f"{100 * count / n:.1f}%"] for size, count in histogram]
    return markdown_table(["batch size", "batches", "share"], rows)


# --- the report folder ---------------------------------------------------------------------------


@dataclass
class Profile:
    """What one ``genserve profile`` run measured, ready to write."""

    command: str
    load: dict[str, Any]  # LoadReport.to_dict(), with "records"
    client_latencies: list[float]  # s, the OK requests of the window
    window: tuple[float, float]  # s, Unix time: the load's measured window, as the server's calls are picked
    calls: list[Call]  # the server's calls in the window
    server: str  # how the server was run, for the summary
    notes: list[str] = field(default_factory=list)  # lines for the summary (what was skipped and why)
    files: dict[str, str] = field(default_factory=dict)  # report-relative path -> what it is

    @property
    def ok_calls(self) -> list[Call]:
        return [c for c in self.calls if c.status == "OK"]

    @property
    def batches(self) -> list[Batch]:
        return batches_of(self.calls)

    def table(self) -> list[StageRow]:
        return stage_table(self.ok_calls, self.client_latencies)

    def to_dict(self) -> dict[str, Any]:
        t0 = self.window[0]

        def stage(s: Stage) -> dict[str, Any]:
            return {"name": s.name, "start": round(s.start - t0, 6), "duration": round(s.duration, 6), "args": s.args}

        return {
            "command": self.command,
            "server": self.server,
            "window": {"start_unix": t0, "end_unix": self.window[1]},
            "times": "seconds; call, stage and batch starts since the window start",
            "load": self.load,
            "stages": [row.__dict__ for row in self.table()],
            "batch_histogram": [{"batch_size": size, "batches": n} for size, n in batch_histogram(self.batches)],
            "calls": [
                {
                    "request_id": c.request_id,
                    "method": c.method,
                    "model": c.model,
                    "status": c.status,
                    "start": round(c.start - t0, 6),
                    "duration": round(c.duration, 6),
                    "breakdown": {k: round(v, 6) for k, v in breakdown(c).items()},
                    "stages": [stage(s) for s in c.stages],
                }
                for c in self.calls
            ],
            "batches": [
                {**b.__dict__, "start": round(b.start - t0, 6), "duration": round(b.duration, 6)} for b in self.batches
            ],
            "notes": self.notes,
        }

    def summary_markdown(self) -> str:
        load, rows, batches = self.load, self.table(), self.batches
        counted = load["status_counts"].get("OK", 0)
        what = f"concurrency {load['concurrency']}" if load["mode"] == "closed" else f"rate {load['rate']:g}/s"
        steps = f", {load['steps']} steps" if load.get("steps") else ""
        lines = [
            f"# genserve profile: {load['model']}",
            "",
            f"    {self.command}",
            "",
            f"Server: {self.server}.",
            "",
            "## Load",
            "",
            f"{load['mode']} loop, {what}{steps}, {load['warmup']:g} s warmup + {load['send_duration']:g} s window: "
            f"{load['requests']} requests ({_counts(load['status_counts'])}), "
            f"**{load['throughput']:.1f} requests/s** ({load['images_per_second']:.1f} images/s).",
            "",
            markdown_table(
                ["client latency (OK)", "mean", "p50", "p90", "p99", "max"],
                [
                    [
                        "ms",
                        ms(load["latency_mean"]),
                        ms(load["latency_p50"]),
                        ms(load["latency_p90"]),
                        ms(load["latency_p99"]),
                        ms(load["latency_max"]),
                    ]
                ],
            ),
            "",
            "## Where the time goes",
            "",
            f"{len(self.ok_calls)} OK calls traced by the server in the window (of {counted} "
            "the client counted). The means add up to the end-to-end mean; each percentile is of its stage "
            "alone, so those do not. client+network is the client's mean latency minus the server's mean "
            "call span (the calls are not paired, so it has no percentiles).",
            "",
            stage_markdown(rows),
            "",
            "## Batches",
            "",
        ]
        if batches:
            kind = "diffusion steps" if batches[0].kind == "step" else "engine calls"
            lines += [
                f"{len(batches)} {kind} ran the window's calls: mean batch size "
                f"{np.mean([b.batch_size for b in batches]):.2f}, mean requests per batch "
                f"{np.mean([b.requests for b in batches]):.2f}, mean {kind[:-1]} "
                f"{ms(mean([b.duration for b in batches]))} ms.",
                "",
                histogram_markdown(batch_histogram(batches)),
            ]
        else:
            lines.append("No engine calls in the window's traces.")
        lines += ["", "## Files", ""]
        lines += [f"- `{name}`: {what}" for name, what in self.files.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _counts(status_counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in status_counts.items()) or "none"


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_stages(profile: Profile, out: Path) -> Path:
    """Stacked server stages of the calls at the p50/p90/p99 of the call span, each beside the
    client's latency at the same percentile."""
    from genserve import images

    picked = calls_at_percentiles(profile.ok_calls)
    load = profile.load
    colors = ["tab:blue", "tab:orange", "tab:olive", "tab:green", "tab:purple", "tab:gray"]
    with images.saved_figure(out, figsize=(8, 5)) as (fig, ax):
        x = np.arange(len(picked))
        bottom = np.zeros(len(picked))
        for name, color in zip(SERVER_STAGES, colors, strict=True):
            values = np.array([max(0.0, breakdown(call)[name]) * 1e3 for _, call in picked])
            ax.bar(x, values, 0.5, bottom=bottom, label=name, color=color)
            bottom += values
        client = [load.get(f"latency_p{q:g}") for q, _ in picked]
        ax.scatter(
            x, [c * 1e3 if c is not None else np.nan for c in client], marker="_", s=900, color="black", zorder=3
        )
        ax.scatter([], [], marker="_", color="black", label="client latency, same percentile")
        ax.set_xticks(x, [f"p{q:g} call\n{call.duration * 1e3:.1f} ms" for q, call in picked])
        ax.set_ylabel("ms")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"{load['model']}: server stages of the calls at percentiles of the call span")
    return out


def plot_batch_histogram(profile: Profile, out: Path) -> Path:
    from genserve import images

    histogram = batch_histogram(profile.batches)
    with images.saved_figure(out, figsize=(8, 4)) as (fig, ax):
        ax.bar([s for s, _ in histogram], [n for _, n in histogram], width=0.8, color="tab:blue")
        ax.set_xlabel("batch size (images per engine call or step)")
        ax.set_ylabel("batches")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"{profile.load['model']}: batch sizes ({len(profile.batches)} batches)")
    return out


def plot_timeline(profile: Profile, out: Path) -> Path:
    """Each engine call or step as a bar at its batch size: x its time since the window start."""
    from genserve import images

    batches, t0 = profile.batches, profile.window[0]
    with images.saved_figure(out, figsize=(12, 4)) as (fig, ax):
        by_size: dict[int, list[tuple[float, float]]] = {}
        for b in batches:
            by_size.setdefault(b.batch_size, []).append((b.start - t0, b.duration))
        cmap = _colormap()
        top = max(by_size, default=1)
        for size, spans in sorted(by_size.items()):
            ax.broken_barh(spans, (size - 0.4, 0.8), color=cmap(size / top))
        ax.set_xlabel("time since the window start (s)")
        ax.set_ylabel("batch size")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{profile.load['model']}: engine calls (bar length = duration)")
    return out


def _colormap() -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"]


PLOTS = {
    "stages.png": (plot_stages, "server stages of the calls at p50/p90/p99 of the call span, stacked"),
    "batch_sizes.png": (plot_batch_histogram, "batch size histogram (each engine call or step once)"),
    "timeline.png": (plot_timeline, "timeline of engine calls: x = time, bar length = duration, y = batch size"),
}


def write_report(profile: Profile, out: Path) -> Path:
    """``summary.md``, ``profile.json`` and the plots into ``out`` (which holds trace.json and any
    engine profiles already); the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    if not plots_available():
        profile.notes.append(
            "plots skipped: matplotlib is not installed (pip install 'genserve[train]' or pip install matplotlib)"
        )
    elif profile.ok_calls:
        for name, (plot, what) in PLOTS.items():
            plot(profile, out / name)
            profile.files[name] = what
    profile.files["profile.json"] = "the raw data: the load report and its records, every call's stages, the batches"
    (out / "profile.json").write_text(json.dumps(profile.to_dict(), indent=1, default=str) + "\n")
    summary = out / "summary.md"
    profile.files = {"summary.md": "this summary", **profile.files}
    summary.write_text(profile.summary_markdown())
    return summary
