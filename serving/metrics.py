"""Prometheus metrics of one server, all labelled by model (names listed in docs/serving.md).

Each server owns its registry, so several in-process servers (tests) never share counters;
``serve --metrics-port`` exposes it over HTTP at ``/metrics``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

log = logging.getLogger(__name__)

# Seconds: from well under a millisecond (one-pass models) to minutes (1000-step diffusion).
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"  # label for calls naming no served model: keeps label values bounded


@dataclass
class Totals:
    """One model's cumulative counts in the terms of Triton's ModelStatistics (KServe's
    ModelStatistics RPC reports them, and perf_analyzer splits latency with them).

    Queue: once per request, when its first unit starts. Compute: every engine call adds its
    duration once for each request it served (Triton's attribution for batched requests), and a
    request is counted once when its last unit is done, so compute_ns / compute_count is the
    engine time a request took part in. Executions are engine calls; inferences are engine rows
    (images, or image-steps for diffusion)."""

    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    execution_count: int = 0
    inference_count: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch size -> [engine calls, ns]


class Counts(Protocol):
    """A scheduler's requests accepted and not finished, and those still waiting to start."""

    @property
    def pending(self) -> int: ...

    @property
    def queued(self) -> int: ...


@dataclass
class ModelMetrics:
    """The instruments of one model, with its label already applied; schedulers report through
    the ``observe_*`` methods so the Prometheus series and the Triton-style totals never diverge."""

    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    request_compute_seconds: Histogram
    batch_size: Histogram
    units: Counter
    pending: Gauge
    queued: Gauge
    totals: Totals

    def track(self, scheduler: Counts) -> None:
        """Read the pending and queued gauges from the model's scheduler when scraped, instead of
        updating them on every request (four locked updates per call on the event loop)."""
        self.pending.set_function(lambda: scheduler.pending)
        self.queued.set_function(lambda: scheduler.queued)

    def observe_queue(self, seconds: float) -> None:
        """A request's first unit started after waiting ``seconds``."""
        self.queue_seconds.observe(seconds)
        self.totals.queue_count += 1
        self.totals.queue_ns += int(seconds * 1e9)

    def observe_engine_call(self, seconds: float, units: int, requests: int) -> None:
        """One engine call of ``units`` rows, shared by ``requests`` requests."""
        ns = int(seconds * 1e9)
        self.compute_seconds.observe(seconds)
        self.batch_size.observe(units)
        self.units.inc(units)
        self.totals.execution_count += 1
        self.totals.inference_count += units
        self.totals.compute_ns += ns * requests
        batch = self.totals.batches.get(units)
        if batch is None:
            self.totals.batches[units] = [1, ns]
        else:
            batch[0] += 1
            batch[1] += ns

    def observe_request_done(self, engine_seconds: float) -> None:
        """A request's last unit left the engine; the engine calls it took part in took ``engine_seconds``."""
        self.totals.compute_count += 1
        self.request_compute_seconds.observe(engine_seconds)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "genserve_requests", "Generate calls finished, by model and gRPC status code", ["model", "code"], registry=r
        )
        self._request_seconds = Histogram(
            "genserve_request_duration_seconds",
            "Time from a call's arrival to its response, successful calls only",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self._queue_seconds = Histogram(
            "genserve_queue_duration_seconds",
            "Time a request waited in its model's queue before its first batch started",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self._compute_seconds = Histogram(
            "genserve_compute_duration_seconds",
            "Time of one engine call (one step of the running batch for diffusion models)",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self._request_compute_seconds = Histogram(
            "genserve_request_compute_duration_seconds",
            "Engine time one request took part in: its engine calls (one-pass) or steps (diffusion), summed",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "genserve_batch_size",
            "Units per engine call: images (one-pass models) or image slots (diffusion steps)",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._units = Counter(
            "genserve_computed_units",
            "Units that reached an engine: images (one-pass models) or image-steps (diffusion)",
            ["model"],
            registry=r,
        )
        self._pending = Gauge(
            "genserve_pending_requests", "Requests accepted and not finished (queued or running)", ["model"], registry=r
        )
        self._queued = Gauge(
            "genserve_queued_requests",
            "Requests in the queue with units not yet started",
            ["model"],
            registry=r,
        )
        self._http = None
        self._models: dict[str, ModelMetrics] = {}

    def for_model(self, model: str) -> ModelMetrics:
        if model not in self._models:
            self._models[model] = self._instruments(model)
        return self._models[model]

    def _instruments(self, model: str) -> ModelMetrics:
        return ModelMetrics(
            request_seconds=self._request_seconds.labels(model=model),
            queue_seconds=self._queue_seconds.labels(model=model),
            compute_seconds=self._compute_seconds.labels(model=model),
            request_compute_seconds=self._request_compute_seconds.labels(model=model),
            batch_size=self._batch_size.labels(model=model),
            units=self._units.labels(model=model),
            pending=self._pending.labels(model=model),
            queued=self._queued.labels(model=model),
            totals=Totals(),
        )

    def count_request(self, model: str, code: str) -> None:
        self._requests.labels(model=model, code=code).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    def serve_http(self, host: str, port: int) -> int:
        """Expose ``/metrics`` on ``host:port`` (0 = any free port) from a daemon thread; returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
