"""Per-model schedulers: the piece between the gRPC layer and a model's runner.

The gRPC layer sees one interface, ``ModelScheduler.submit(request) -> images``. For now every
model has a ``SerialScheduler`` (one request at a time, run in a worker thread so the event loop
stays free for other models, health checks and new calls); a dynamic batcher or an
iteration-level diffusion scheduler will implement the same interface.

A cancelled call (client gone, deadline passed, end of the shutdown grace period) stops its
request at the runner's next engine call, so it neither holds the model for its remaining steps
nor keeps a stopping process alive for long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any, Protocol

import numpy as np

from genserve.serving.domain import GenerateRequest

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What a scheduler needs of a model (``ModelRunner`` is one)."""

    name: str

    def validate(self, request: GenerateRequest) -> Any: ...

    def generate(self, request: GenerateRequest, cancelled: threading.Event | None = None) -> np.ndarray: ...


class ModelScheduler(Protocol):
    async def submit(self, request: GenerateRequest) -> np.ndarray:
        """Run ``request`` to completion: uint8 images (N, H, W, C). Raises domain errors."""
        ...


class SerialScheduler:
    """One request at a time for one model; requests wait their turn in arrival order.

    A request is validated before it waits, so a bad one is rejected at once rather than after
    the request ahead of it.
    """

    def __init__(self, runner: Runner, executor: concurrent.futures.Executor):
        self.runner = runner
        self._executor = executor
        self._lock = asyncio.Lock()
        self.pending = 0  # requests submitted and not finished (waiting or running)

    async def submit(self, request: GenerateRequest) -> np.ndarray:
        self.runner.validate(request)
        self.pending += 1
        try:
            async with self._lock:
                loop = asyncio.get_running_loop()
                started = time.perf_counter()
                log.debug("model=%s running request n=%d seed=%d", self.runner.name, request.num_images, request.seed)
                cancelled = threading.Event()
                work = loop.run_in_executor(self._executor, self.runner.generate, request, cancelled)
                try:
                    result = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The runner stops before its next engine call; the model stays ours until then,
                    # so the next request never runs beside an abandoned one.
                    cancelled.set()
                    await asyncio.wait([work])
                    log.info("model=%s cancelled request stopped", self.runner.name)
                    raise
                log.debug("model=%s ran request in %.3f s", self.runner.name, time.perf_counter() - started)
                return result
        finally:
            self.pending -= 1
