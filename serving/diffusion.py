"""The step-level diffusion scheduler: one running batch of slots per model, one engine call per
step for every active slot, joins and leaves at every step boundary (``stepping.plan_iteration``).

The slots' state (the current images, and per slot its seed, image index, step counter and
schedule) belongs to the engine (``slots.SlotState``: host memory for ONNX Runtime, device memory
for the cuda backend). The scheduler keeps a reference per row and tells the state what happens
at each step boundary: finished slots are read (as uint8, one copy for all of them), leaving
slots are swap-removed so the active rows stay contiguous, joining images start in the rows
after them, and one ``step`` runs every active row, each at its own timestep with noise keyed by
(seed, image index, step). An image therefore depends only on its own (seed, index, schedule):
never on the batch it ran in.

Admission, priorities, deadlines and cancellation behave as in the one-pass batcher
(``batching.QueuePolicy``); results return the moment a request's last image finishes, and a
cancelled or expired request frees its slots at the next step boundary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from genserve import images
from genserve.serving import calls
from genserve.serving.batching import Pending, QueuePolicy, deadline_error
from genserve.serving.config import ModelSettings
from genserve.serving.domain import GenerateRequest
from genserve.serving.errors import DeadlineExceeded, InternalError, ServingError
from genserve.serving.metrics import Metrics, ModelMetrics
from genserve.serving.runner import ModelRunner, StepPlan
from genserve.serving.stepping import JoinPolicy, Slot, plan_iteration
from genserve.serving.tracing import CallTrace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One event of a streamed request: steps done of ``total`` (the mean over its images),
    an optional low-resolution preview, or, last, the finished images."""

    step: int
    total: int
    preview: np.ndarray | None = None  # uint8 (N, h, w, C) of the images running now
    images: np.ndarray | None = None  # uint8 (N, H, W, C), on the final event only


@dataclass(eq=False)
class _Request:
    id: int
    request: GenerateRequest
    plan: StepPlan
    priority: int
    arrival: float
    deadline: float | None
    future: asyncio.Future
    out: np.ndarray  # uint8 (N, H, W, C), filled as images finish
    next_image: int = 0
    done_images: int = 0
    steps_done: int = 0  # summed over its images
    events: asyncio.Queue | None = None  # Progress events, for streamed requests
    preview_every: int = 0
    last_reported: int = -1
    engine_seconds: float = 0.0  # of the steps it took part in
    trace: CallTrace | None = None  # the call's, when it is traced: queue wait and each step
    arrival_ns: int = 0

    @property
    def num_images(self) -> int:
        return self.request.num_images

    @property
    def steps(self) -> int:
        return len(self.plan.timesteps)

    def pending(self) -> Pending:
        return Pending(self.id, self.num_images - self.next_image, self.priority, self.arrival, self.deadline)


@dataclass(eq=False)
class _SlotRef:
    request: _Request
    image: int
    step: int = 0


class DiffusionScheduler:
    def __init__(
        self,
        runner: ModelRunner,
        settings: ModelSettings,
        executor: concurrent.futures.Executor,
        metrics: ModelMetrics | None = None,
        join: JoinPolicy | None = None,
        clock=time.monotonic,
    ):
        self.runner = runner
        self.name = runner.name
        self.max_slots = settings.max_batch_size or runner.engines[0].max_batch_size
        self.join = join or JoinPolicy(settings.diffusion_batching)
        self.queue_policy: QueuePolicy = settings.queue_policy()
        self._executor = executor
        self._metrics = metrics or Metrics().for_model(self.name)
        self._clock = clock
        self._state = runner.open_slots(capacity=self.max_slots)
        self._shape = runner.manifest.image_shape
        self._slots: list[_SlotRef] = []
        self._waiting: dict[int, _Request] = {}
        self._cancelled: set[int] = set()  # running requests whose callers left
        self._ids = itertools.count()
        self._step_ids = itertools.count()  # engine calls, numbered for traces
        self._pending = 0
        self._metrics.track(self)
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active_slots(self) -> int:
        return len(self._slots)

    async def submit(self, request: GenerateRequest, deadline: float | None = None) -> np.ndarray:
        """Run ``request`` to completion: uint8 images (N, H, W, C)."""
        entry = self._accept(request, deadline)
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._cancel(entry)
            raise
        finally:
            self._finish(entry)

    async def stream(
        self, request: GenerateRequest, deadline: float | None = None, preview_every: int = 0
    ) -> AsyncIterator[Progress]:
        """Progress events while ``request`` runs, then one with the images. Closing the iterator
        (the client cancelled the stream) frees the request's slots at the next step boundary."""
        entry = self._accept(request, deadline, events=asyncio.Queue(), preview_every=preview_every)
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(entry.events.get())
                await asyncio.wait({getter, entry.future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                while not entry.events.empty():
                    yield entry.events.get_nowait()
                result = entry.future.result()  # raises the request's error
                yield Progress(entry.steps, entry.steps, images=result)
                return
        finally:
            if getter is not None:
                getter.cancel()
            if not entry.future.done():
                self._cancel(entry)
                entry.future.cancel()
            self._finish(entry)

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    # --- admission -------------------------------------------------------------------------

    def _accept(
        self, request: GenerateRequest, deadline: float | None, events: asyncio.Queue | None = None, preview_every=0
    ) -> _Request:
        plan = self.runner.validate(request)
        level = self.queue_policy.admit(self.name, len(self._waiting), request.priority)
        now = self._clock()
        entry = _Request(
            id=next(self._ids),
            request=request,
            plan=plan,
            priority=level,
            arrival=now,
            deadline=self.queue_policy.deadline(now, deadline, request.timeout),
            future=asyncio.get_running_loop().create_future(),
            out=np.empty((request.num_images, *self._shape[1:], self._shape[0]), np.uint8),
            events=events,
            preview_every=preview_every,
            trace=calls.trace(),
        )
        if entry.trace is not None:
            entry.arrival_ns = time.time_ns()
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.create_task(self._run_loop(), name=f"diffusion-{self.name}")
        self._waiting[entry.id] = entry
        self._pending += 1
        self._wake.set()
        return entry

    def _cancel(self, entry: _Request) -> None:
        self._waiting.pop(entry.id, None)
        if entry.next_image > 0:
            self._cancelled.add(entry.id)  # its running slots leave at the next step boundary
        self._wake.set()

    def _finish(self, entry: _Request) -> None:
        self._pending -= 1

    # --- the loop --------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = self._clock()
            self._apply(now)
            n = len(self._slots)
            if n == 0:
                plan_wake = min((e.deadline for e in self._waiting.values() if e.deadline is not None), default=None)
                timeout = None if plan_wake is None else max(0.0, plan_wake - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            started, started_ns = time.perf_counter(), time.time_ns()
            try:
                await loop.run_in_executor(self._executor, self._state.step, n)
            except Exception as exc:
                self._fail_running(exc)
                continue
            seconds = time.perf_counter() - started
            stepped = {id(ref.request): ref.request for ref in self._slots}
            for request in stepped.values():
                request.engine_seconds += seconds
            requests = len(stepped)
            self._metrics.observe_engine_call(seconds, n, requests)
            self._trace_step(started_ns, n, requests)
            for ref in self._slots:
                ref.step += 1
                ref.request.steps_done += 1
            self._report_progress()

    def _trace_step(self, started_ns: int, n: int, requests: int) -> None:
        """A ``step`` stage for each traced request in this step: its step index, the batch."""
        traced = {id(ref.request): ref for ref in self._slots if ref.request.trace is not None}
        if not traced:
            return
        ended_ns, step_id = time.time_ns(), next(self._step_ids)
        for ref in traced.values():
            ref.request.trace.add(
                "step",
                started_ns,
                ended_ns,
                step=ref.step,
                of=ref.request.steps,
                batch=step_id,
                batch_size=n,
                requests=requests,
            )

    def _apply(self, now: float) -> None:
        """Carry out this step boundary's plan: finished and dropped slots leave, waiting images join."""
        slots = [Slot(r.request.id, r.image, r.step, r.request.steps, r.request.deadline) for r in self._slots]
        plan = plan_iteration(
            slots, [e.pending() for e in self._waiting.values()], self._cancelled, self.max_slots, now, self.join
        )
        running = {r.request.id: r.request for r in self._slots}
        for request_id in plan.expired:
            entry = self._waiting.pop(request_id, None)
            if request_id in running:
                entry = running[request_id]
                error = DeadlineExceeded(
                    f"the request's deadline passed after {now - entry.arrival:.3f} s, while sampling "
                    f"({entry.steps_done // entry.num_images} of {entry.steps} steps done); its work was dropped"
                )
            else:
                error = deadline_error(self.name, now - entry.arrival)
            if not entry.future.done():
                entry.future.set_exception(error)
        finished = self._state.images(plan.finished) if plan.finished else ()  # one read for all
        for i, image in zip(plan.finished, finished, strict=True):
            ref = self._slots[i]
            ref.request.out[ref.image] = image
            ref.request.done_images += 1
            if ref.request.done_images == ref.request.num_images:
                self._metrics.observe_request_done(ref.request.engine_seconds)
                if not ref.request.future.done():
                    ref.request.future.set_result(ref.request.out)
        for i in sorted(plan.finished + plan.dropped, reverse=True):  # swap-remove, highest first
            last = len(self._slots) - 1
            if i != last:
                self._state.move(last, i)
                self._slots[i] = self._slots[last]
            self._slots.pop()
        self._cancelled &= {r.request.id for r in self._slots}
        for take in plan.joins:
            entry = self._waiting[take.id]
            if entry.next_image == 0:
                self._metrics.observe_queue(now - entry.arrival)
                if entry.trace is not None:
                    entry.trace.add("queue", entry.arrival_ns, time.time_ns())
            first = entry.next_image
            entry.next_image += take.units
            if entry.next_image == entry.num_images:
                del self._waiting[take.id]
            self._join(entry, range(first, entry.next_image))
        if plan.joins:
            log.debug(
                "model=%s running batch of %d slots after %d joined", self.name, len(self._slots), len(plan.joins)
            )

    def _join(self, entry: _Request, image_indices: range) -> None:
        """Images ``image_indices`` (positions in the request) start in the rows after the running ones."""
        idx = np.asarray(entry.request.indices(image_indices.start, image_indices.stop), dtype=np.int64)
        seeds = np.full(len(idx), entry.request.seed, dtype=np.int64)
        conditioning = self.runner.step_conditioning(seeds, idx, entry.plan, entry.request.label)
        self._state.join(len(self._slots), seeds, idx, entry.plan.timesteps, entry.plan.coefs, conditioning)
        self._slots.extend(_SlotRef(entry, int(i)) for i in image_indices)

    def _fail_running(self, exc: Exception) -> None:
        if not isinstance(exc, ServingError):
            log.error("model=%s step of %d slots failed", self.name, len(self._slots), exc_info=exc)
            exc = InternalError(f"model {self.name} failed to run a step ({type(exc).__name__}); see the server log")
        for ref in self._slots:
            if not ref.request.future.done():
                ref.request.future.set_exception(exc)
            self._waiting.pop(ref.request.id, None)
        self._slots.clear()
        self._cancelled.clear()

    def _report_progress(self) -> None:
        seen = set()
        for ref in self._slots:
            entry = ref.request
            if entry.events is None or entry.id in seen:
                continue
            seen.add(entry.id)
            step = entry.steps_done // entry.num_images
            if step == entry.last_reported or step >= entry.steps:
                continue
            entry.last_reported = step
            preview = None
            if entry.preview_every and step % entry.preview_every == 0:
                rows = [i for i, r in enumerate(self._slots) if r.request is entry]
                preview = _preview(self._state.values(rows))
            entry.events.put_nowait(Progress(step, entry.steps, preview=preview))


def _preview(x: np.ndarray) -> np.ndarray:
    """Current images at half resolution (2×2 mean), uint8 (N, h, w, C): cheap to send every few steps."""
    n, c, h, w = x.shape
    x = np.clip(x[:, :, : h - h % 2, : w - w % 2], -1.0, 1.0)
    pooled = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return images.to_uint8(pooled)
