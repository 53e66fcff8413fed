"""The dynamic batcher: a bounded priority queue per model, and the loop that carries out
``batching.next_batch`` on free engine instances.

It knows nothing about models (pytriton's ``bind(infer_func=...)``): it is given one compute
callable per engine instance, ``compute(slices) -> array`` with one row per unit, and runs them
in an executor. What it owns is the life of a request between acceptance and its result:

- admission: a full queue rejects at once (``Overloaded`` -> RESOURCE_EXHAUSTED);
- deadlines: the call's deadline (and an optional timeout) travel with the request; once past,
  the request fails with ``DeadlineExceeded`` and none of its remaining units reach an engine;
- cancellation: a cancelled caller leaves the queue at once; units already running finish,
  and a long compute can watch ``Slice.cancelled`` to stop early;
- results: a request's units may run in several batches; its caller gets them back in order.

Everything here runs on the event loop's thread except the compute calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genserve.serving.batching import (
    BatchPolicy,
    Pending,
    QueuePolicy,
    Take,
    deadline_error,
    deadlines_only,
    next_batch,
)
from genserve.serving.errors import InternalError, ServingError
from genserve.serving.metrics import Metrics, ModelMetrics
from genserve.serving.tracing import CallTrace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slice:
    """Units ``[start, stop)`` of one request, as handed to a compute callable."""

    payload: Any  # what the request was submitted with
    start: int
    stop: int
    cancelled: threading.Event  # set once the request is cancelled or failed

    @property
    def units(self) -> int:
        return self.stop - self.start


Compute = Callable[[Sequence[Slice]], np.ndarray]  # -> (sum of slice units, ...) rows in slice order


@dataclass(eq=False)
class _Entry:
    id: int
    payload: Any
    units: int
    priority: int
    arrival: float
    deadline: float | None
    future: asyncio.Future
    next_unit: int = 0  # first unit not yet handed to a batch
    done_units: int = 0
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    engine_seconds: float = 0.0  # of the engine calls it took part in
    trace: CallTrace | None = None  # the call's, when it is traced: queue wait and engine calls
    arrival_ns: int = 0  # time.time_ns(), for the trace

    def pending(self) -> Pending:
        return Pending(self.id, self.units - self.next_unit, self.priority, self.arrival, self.deadline)


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        computes: Sequence[Compute],
        policy: BatchPolicy,
        queue: QueuePolicy,
        executor: concurrent.futures.Executor,
        metrics: ModelMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,  # the event loop's clock: deadlines are compared to it
    ):
        if not computes:
            raise ValueError("a batcher needs at least one engine instance")
        self.name = name
        self.policy = policy
        self.queue_policy = queue
        self._computes = list(computes)
        self._executor = executor
        self._metrics = metrics or Metrics().for_model(name)
        self._clock = clock
        self._ids = itertools.count()
        self._batch_ids = itertools.count()  # engine calls, numbered for traces
        self._queue: dict[int, _Entry] = {}  # requests with units not yet started, in arrival order
        self._pending = 0  # accepted and not finished
        self._wake: asyncio.Event | None = None  # set on arrivals and on instances freed
        self._free: list[int] = []  # engine instances not running a batch
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._metrics.track(self)  # the pending and queued gauges read the two properties below

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(
        self,
        payload: Any,
        units: int,
        priority: int = 0,
        deadline: float | None = None,
        timeout: float | None = None,
        trace: CallTrace | None = None,
    ) -> np.ndarray:
        """Queue ``units`` units of ``payload``; return their rows, in order, once all have run.

        ``deadline`` is a time on this batcher's clock (the gRPC deadline), ``timeout`` seconds from
        now (the request's own); the earlier one counts. Raises Overloaded, DeadlineExceeded,
        InvalidArgument (priority out of range), or what the compute raised."""
        qp = self.queue_policy
        level = qp.admit(self.name, len(self._queue), priority)
        now = self._clock()
        entry = _Entry(
            id=next(self._ids),
            payload=payload,
            units=units,
            priority=level,
            arrival=now,
            deadline=qp.deadline(now, deadline, timeout),
            future=asyncio.get_running_loop().create_future(),
            trace=trace,
            arrival_ns=time.time_ns() if trace is not None else 0,
        )
        self._ensure_running()
        self._queue[entry.id] = entry
        self._pending += 1
        if self._free or entry.deadline is not None:
            # A batch may start now, or this deadline may fall before the loop's next wake-up. With
            # every instance busy and no deadline, the next freed instance wakes the loop anyway.
            self._wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # The caller is gone (client cancel, gRPC deadline, end of the shutdown grace period).
            entry.cancelled.set()
            self._queue.pop(entry.id, None)
            raise
        finally:
            self._pending -= 1

    async def close(self) -> None:
        """Stop dispatching (after the server has drained its calls)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    def _ensure_running(self) -> None:
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._free = list(range(len(self._computes)))
            self._loop_task = asyncio.create_task(self._dispatch_loop(), name=f"batcher-{self.name}")

    async def _dispatch_loop(self) -> None:
        """Decide whenever something changes: an arrival, a free instance, a delay or a deadline due.

        A batch is formed only when an instance can start it at once (a batch formed earlier would
        stop growing while it waits); deadlines are enforced while every instance is busy too."""
        while True:
            self._wake.clear()
            now = self._clock()
            if self._free:
                decision = next_batch([e.pending() for e in self._queue.values()], self.policy, now)
            else:
                decision = deadlines_only(self._queue.values(), now)
            for entry_id in decision.expired:
                self._expire(self._queue.pop(entry_id), now)
            if decision.batch:
                instance = self._free.pop()
                task = asyncio.create_task(self._run(instance, self._take(decision.batch, now)))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                continue
            timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _expire(self, entry: _Entry, now: float) -> None:
        entry.cancelled.set()
        if not entry.future.done():
            entry.future.set_exception(deadline_error(self.name, now - entry.arrival, entry.next_unit, entry.units))

    def _take(self, takes: Sequence[Take], now: float) -> list[tuple[_Entry, int, int]]:
        batch = []
        for take in takes:
            entry = self._queue[take.id]
            if entry.next_unit == 0:
                self._metrics.observe_queue(now - entry.arrival)
                if entry.trace is not None:
                    entry.trace.add("queue", entry.arrival_ns, time.time_ns())
            start = entry.next_unit
            entry.next_unit += take.units
            batch.append((entry, start, entry.next_unit))
            if entry.next_unit == entry.units:
                del self._queue[take.id]
        return batch

    async def _run(self, instance: int, batch: list[tuple[_Entry, int, int]]) -> None:
        slices = [Slice(e.payload, start, stop, e.cancelled) for e, start, stop in batch]
        units = sum(s.units for s in slices)
        log.debug(
            "model=%s running batch of %d units from %d requests on instance %d", self.name, units, len(batch), instance
        )
        loop = asyncio.get_running_loop()
        started, started_ns = time.perf_counter(), time.time_ns()
        try:
            out = await loop.run_in_executor(self._executor, self._computes[instance], slices)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.error("model=%s batch of %d units failed", self.name, units, exc_info=exc)
                what = type(exc).__name__
                exc = InternalError(f"model {self.name} failed to run a batch ({what}); see the server log")
            for entry, _, _ in batch:
                entry.cancelled.set()
                self._queue.pop(entry.id, None)
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._free.append(instance)
            self._wake.set()
        seconds = time.perf_counter() - started
        self._metrics.observe_engine_call(seconds, units, len(batch))
        traced = [entry.trace for entry, _, _ in batch if entry.trace is not None]
        if traced:
            ended_ns, batch_id = time.time_ns(), next(self._batch_ids)
            for trace in traced:
                trace.add("engine", started_ns, ended_ns, batch=batch_id, batch_size=units, requests=len(batch))
        offset = 0
        for entry, start, stop in batch:
            entry.parts.append((start, out[offset : offset + stop - start]))
            offset += stop - start
            entry.done_units += stop - start
            entry.engine_seconds += seconds
            if entry.done_units < entry.units:
                continue
            self._metrics.observe_request_done(entry.engine_seconds)
            if not entry.future.done():
                entry.parts.sort(key=lambda part: part[0])
                rows = [rows for _, rows in entry.parts]
                entry.future.set_result(rows[0] if len(rows) == 1 else np.concatenate(rows))
