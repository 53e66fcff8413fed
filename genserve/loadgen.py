"""A load generator for a genserve server: closed loop (N workers) or open loop (Poisson arrivals).

    report = run_load(LoadSpec("127.0.0.1:50051", "dcgan-mnist", concurrency=8, duration=10))
    print(report.summary())
    report.write_json(Path("load.json"))

Closed loop measures the throughput the server sustains at a fixed number of outstanding requests;
open loop offers a fixed arrival rate whatever the server does, which is what overload and queueing
behaviour (rejections, deadlines, recovery) need: a closed loop slows down with the server and so
never overloads it. The statistics (``summarize``) are a pure function of the per-request records,
so they are tested without a server.

Times: the measured window starts when the warmup ends. Warmup is the same load (the same workers,
or the same arrival process) whose requests are simply not counted, so the window starts in steady
state. Requests sent in the window are counted even when they finish after it (they are awaited);
``duration`` in the report is therefore the window up to the last counted response, at least the
send window, and throughput is OK responses over it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from genserve import images
from genserve.channel import Credentials, open_channel
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc

log = logging.getLogger(__name__)

OK = "OK"
DEFAULT_CALL_TIMEOUT = 60.0  # s; without --timeout-ms no request may hang the run forever
TIMEOUT_MARGIN = 5.0  # s past the server-side deadline before the client gives up itself
CONNECT_TIMEOUT = 10.0  # s to reach the server before the run starts (fail fast, not N x UNAVAILABLE)
SEND_LAG_WARNING = 0.05  # s; open-loop arrivals fired later than this mean the client is the bottleneck


@dataclass(frozen=True)
class LoadSpec:
    """What to send. Exactly one of ``concurrency`` (closed loop) and ``rate`` (open loop, requests/s)."""

    server: str
    model: str
    _: KW_ONLY
    concurrency: int | None = None
    rate: float | None = None
    duration: float  # s of measured window (sending), after the warmup
    num_images: int = 1
    steps: int | tuple[int, ...] | None = None  # several: request i uses steps[i % len(steps)]
    timeout_ms: float | None = None  # server-side deadline of each request; None = none
    priority: int = 0  # 0 = the model's default level
    warmup: float = 1.0  # s of uncounted load before the window
    seed: int = 0  # of the open-loop arrival times
    channels: int = 4  # gRPC connections, used round robin, so HTTP/2 flow control is not the bottleneck
    credentials: Credentials | None = None  # TLS and token (genserve.channel); None = plain text
    retry: bool = True  # retry UNAVAILABLE (genserve.channel); off, every refusal is counted as it happens

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("set exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0, got {self.duration}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if self.timeout_ms is not None and not self.timeout_ms > 0:
            raise ValueError(f"timeout_ms must be > 0, got {self.timeout_ms}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def call_timeout(self) -> float:
        """Client-side deadline of each call (s): the server's deadline plus a margin, else a fixed one."""
        return self.timeout_ms / 1000 + TIMEOUT_MARGIN if self.timeout_ms is not None else DEFAULT_CALL_TIMEOUT


@dataclass(frozen=True)
class RequestRecord:
    """One counted request: ``sent`` in s since the window start, ``latency`` in s, ``status`` a code name."""

    sent: float
    latency: float
    status: str

    @property
    def done(self) -> float:
        return self.sent + self.latency


def _percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(
    records: Sequence[RequestRecord], *, duration: float, send_duration: float, num_images: int
) -> dict[str, Any]:
    """The report's statistics of ``records``: latencies over OK responses (None without any), throughput
    over ``duration`` (s), offered rate over ``send_duration`` (s), and a per-second timeline.

    Timeline bucket ``t`` covers [t, t + 1) s of the window: ``sent`` counts requests by send time, ``ok``
    and ``rejected`` (every non-OK status) count responses by completion time, and ``p50``/``p99`` are
    over the OK responses completed in it, so the buckets read as what the server delivered each second.
    There are ``round(duration)`` buckets (at least the send window's): the last one also takes the rest
    of the window, so a few ms of draining make no near-empty bucket of their own.
    """
    ok_latencies = np.array([r.latency for r in records if r.status == OK], dtype=float)
    by_status: dict[str, list[float]] = {}
    for r in records:
        by_status.setdefault(r.status, []).append(r.latency)
    n_ok = len(ok_latencies)
    buckets = max(1, math.ceil(send_duration), round(duration))
    sent, ok, rejected = [0] * buckets, [0] * buckets, [0] * buckets
    ok_by_bucket: list[list[float]] = [[] for _ in range(buckets)]
    for r in records:
        sent[min(buckets - 1, max(0, int(r.sent)))] += 1
        b = min(buckets - 1, max(0, int(r.done)))
        if r.status == OK:
            ok[b] += 1
            ok_by_bucket[b].append(r.latency)
        else:
            rejected[b] += 1
    timeline = [
        {
            "t": t,
            "sent": sent[t],
            "ok": ok[t],
            "rejected": rejected[t],
            "p50": _percentile(ok_by_bucket[t], 50),
            "p99": _percentile(ok_by_bucket[t], 99),
        }
        for t in range(buckets)
    ]
    return {
        "requests": len(records),
        "ok": n_ok,
        "throughput": n_ok / duration,
        "images_per_second": n_ok * num_images / duration,
        "offered_rate": len(records) / send_duration,
        "latency_mean": float(ok_latencies.mean()) if n_ok else None,
        "latency_p50": _percentile(ok_latencies, 50),
        "latency_p90": _percentile(ok_latencies, 90),
        "latency_p99": _percentile(ok_latencies, 99),
        "latency_max": float(ok_latencies.max()) if n_ok else None,
        "status_counts": dict(sorted(Counter(r.status for r in records).items())),
        "latency_by_status": {
            status: {"mean": float(np.mean(lat)), "p99": _percentile(lat, 99), "max": float(np.max(lat))}
            for status, lat in sorted(by_status.items())
        },
        "timeline": timeline,
    }


def _rounded(value: Any) -> Any:
    """Floats to the microsecond (or 1e-6 of a rate): the JSON stays readable and loses nothing measured."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@dataclass
class LoadReport:
    """A run's settings and statistics; ``records`` (every counted request) stay out of the JSON."""

    spec: LoadSpec
    started_at: str  # ISO 8601 UTC, when the load (warmup included) started
    duration: float  # s from the window start to the last counted response (>= spec.duration)
    warmup_requests: int  # sent during the warmup, not counted
    stats: dict[str, Any]  # summarize()
    records: list[RequestRecord] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "server": s.server,
            "model": s.model,
            "mode": s.mode,
            "concurrency": s.concurrency,
            "rate": s.rate,
            "duration": round(self.duration, 6),
            "send_duration": s.duration,
            "warmup": s.warmup,
            "warmup_requests": self.warmup_requests,
            "num_images": s.num_images,
            "steps": s.steps,
            "timeout_ms": s.timeout_ms,
            "priority": s.priority,
            "seed": s.seed,
            "channels": s.channels,
            "started_at": self.started_at,
            **_rounded(self.stats),
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        """One line for people: load, throughput, OK latency percentiles, status counts."""
        s, st = self.spec, self.stats
        load = f"concurrency {s.concurrency}" if s.mode == "closed" else f"rate {s.rate:g}/s"

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value * 1000:.1f} ms"

        counts = " ".join(f"{name}={n}" for name, n in st["status_counts"].items()) or "none"
        return (
            f"{s.model} {s.mode} loop, {load}: {st['requests']} requests in {self.duration:.2f} s, "
            f"{st['throughput']:.1f} OK/s ({st['images_per_second']:.1f} images/s), "
            f"p50 {ms(st['latency_p50'])}, p99 {ms(st['latency_p99'])}; {counts}"
        )


class _Runner:
    """One run's channels, clock and records; the event loop is single-threaded, so no locks."""

    def __init__(self, spec: LoadSpec, stubs: list[genserve_pb2_grpc.GenerationServiceStub]):
        self.spec = spec
        self.stubs = stubs
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.window_start = self.start + spec.warmup
        self.end = self.window_start + spec.duration
        self.records: list[RequestRecord] = []
        self.warmup_requests = 0
        self.in_flight = 0
        self.last_done = self.window_start
        self._index = itertools.count()

    async def call(self) -> None:
        """One Generate call, recorded if sent in the window; a failed call is a status, not an error."""
        i = next(self._index)
        request = GenerateRequest(
            self.spec.model,
            self.spec.num_images,
            seed=i,  # a different seed each request: no server could answer from a cache
            steps=self.spec.steps[i % len(self.spec.steps)] if isinstance(self.spec.steps, tuple) else self.spec.steps,
            priority=self.spec.priority,
            timeout=self.spec.timeout_ms / 1000 if self.spec.timeout_ms is not None else None,
        )
        message = convert.generate_request_to_proto(request, convert.ImageEncoding.RAW)
        stub = self.stubs[i % len(self.stubs)]
        self.in_flight += 1
        sent = self.loop.time()
        try:
            await stub.Generate(message, timeout=self.spec.call_timeout)
            status = OK
        except grpc.aio.AioRpcError as err:
            status = err.code().name
        finally:
            self.in_flight -= 1
        done = self.loop.time()
        if sent < self.window_start:
            self.warmup_requests += 1
            return
        self.records.append(RequestRecord(sent - self.window_start, done - sent, status))
        self.last_done = max(self.last_done, done)

    async def closed_loop(self, concurrency: int) -> None:
        async def worker() -> None:
            while self.loop.time() < self.end:
                await self.call()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(self, rate: float, seed: int) -> None:
        """Poisson arrivals: each request its own task, however many are outstanding."""
        rng = np.random.default_rng(seed)
        tasks: set[asyncio.Task] = set()
        worst_lag = 0.0
        arrival = self.start + rng.exponential(1 / rate)
        while arrival < self.end:
            now = self.loop.time()
            if arrival > now:
                await asyncio.sleep(arrival - now)
                now = self.loop.time()
            # Fire every arrival already due, so a late wake-up does not lower the offered rate.
            while arrival <= now and arrival < self.end:
                worst_lag = max(worst_lag, now - arrival)
                task = asyncio.create_task(self.call())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                arrival += rng.exponential(1 / rate)
        if worst_lag > SEND_LAG_WARNING:
            log.warning("arrivals were fired up to %.0f ms late: the load generator was saturated", worst_lag * 1e3)
        if tasks:
            await asyncio.gather(*tasks)


async def _progress(runner: _Runner, bar: Any) -> None:
    """Advance a tqdm bar over the run's seconds, then show the in-flight count while draining."""
    total = runner.spec.warmup + runner.spec.duration
    while True:
        elapsed = min(total, runner.loop.time() - runner.start)
        bar.n = round(elapsed, 1)
        phase = "warmup" if elapsed < runner.spec.warmup else ("window" if elapsed < total else "draining")
        bar.set_postfix_str(f"{phase}, {len(runner.records)} done, {runner.in_flight} in flight", refresh=False)
        bar.refresh()
        await asyncio.sleep(0.25)


async def run_load_async(spec: LoadSpec, progress: bool = False) -> LoadReport:
    """The run itself (see ``run_load``); must be awaited in a running event loop."""
    # Channels with equal arguments share one connection otherwise, and the pool would be one channel.
    options = [("grpc.use_local_subchannel_pool", 1)]
    n_channels = min(spec.channels, spec.concurrency or spec.channels)
    channels = [
        open_channel(spec.server, spec.credentials, aio=True, retry=spec.retry, options=options)
        for _ in range(n_channels)
    ]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT)
        except TimeoutError:
            raise ConnectionError(f"cannot connect to {spec.server} within {CONNECT_TIMEOUT:g} s") from None
        stubs = [genserve_pb2_grpc.GenerationServiceStub(c) for c in channels]
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        runner = _Runner(spec, stubs)
        log.info(
            "%s loop on %s at %s: %g s warmup + %g s window",
            spec.mode,
            spec.model,
            f"concurrency {spec.concurrency}" if spec.mode == "closed" else f"{spec.rate:g} requests/s",
            spec.warmup,
            spec.duration,
        )
        ticker = bar = None
        if progress:
            from tqdm import tqdm

            bar_format = "{l_bar}{bar}| {n:.1f}/{total:g} s [{elapsed}{postfix}]"
            bar = tqdm(total=spec.warmup + spec.duration, file=sys.stderr, bar_format=bar_format)
            ticker = asyncio.create_task(_progress(runner, bar))
        try:
            if spec.concurrency is not None:
                await runner.closed_loop(spec.concurrency)
            else:
                await runner.open_loop(spec.rate, spec.seed)
        finally:
            if ticker is not None:
                ticker.cancel()
                bar.n = bar.total
                bar.set_postfix_str(f"done, {len(runner.records)} counted", refresh=False)
                bar.close()
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    duration = max(spec.duration, runner.last_done - runner.window_start)
    records = sorted(runner.records, key=lambda r: r.sent)
    stats = summarize(records, duration=duration, send_duration=spec.duration, num_images=spec.num_images)
    return LoadReport(spec, started_at, duration, runner.warmup_requests, stats, records)


def run_load(spec: LoadSpec, progress: bool = False) -> LoadReport:
    """Run ``spec`` against its server and return the report (blocking; ``progress``: a tqdm bar on stderr).

    Raises ConnectionError if the server cannot be reached; failed calls are statuses in the report.
    """
    return asyncio.run(run_load_async(spec, progress))


def plot_report(report: LoadReport, out: Path) -> Path:
    """A PNG of the run: each request's latency by send time above, per-second OK and non-OK below."""
    s = report.spec
    with images.saved_figure(out, 2, 1, sharex=True, figsize=(10, 7), height_ratios=[3, 2]) as (fig, (top, bottom)):
        for ok, color, label in ((True, "tab:blue", OK), (False, "tab:red", "not OK")):
            chosen = [r for r in report.records if (r.status == OK) == ok]
            if chosen:
                top.scatter([r.sent for r in chosen], [r.latency for r in chosen], s=6, c=color, alpha=0.6, label=label)
        top.set_yscale("log")
        top.set_ylabel("latency (s)")
        top.grid(True, which="both", alpha=0.3)
        if report.records:
            top.legend(loc="upper right")
        timeline = report.stats["timeline"]
        t = [b["t"] + 0.5 for b in timeline]
        bottom.bar(t, [b["ok"] for b in timeline], width=0.9, color="tab:blue", label="OK / s")
        bottom.bar(
            t,
            [b["rejected"] for b in timeline],
            width=0.9,
            bottom=[b["ok"] for b in timeline],
            color="tab:red",
            label="not OK / s (stacked)",
        )
        bottom.set_xlabel("time since window start (s; latency plotted at send time)")
        bottom.set_ylabel("responses per second")
        bottom.legend(loc="upper right")
        bottom.grid(True, axis="y", alpha=0.3)
        load = f"concurrency {s.concurrency}" if s.mode == "closed" else f"rate {s.rate:g}/s"
        fig.suptitle(f"{s.model}: {s.mode} loop, {load}, {s.num_images} image(s)/request")
    return out
