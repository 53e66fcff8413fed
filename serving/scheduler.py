"""Per-model schedulers: the piece between the gRPC layer and a model's runner.

The gRPC layer sees one interface, ``ModelScheduler.submit(request, deadline) -> images``:

- ``ImageBatchScheduler`` (one-pass samplers and translators, here): a ``DynamicBatcher`` whose
  unit is one image (a generated image, an interpolation frame or a translated image). Images of
  several requests share engine calls, and a request for many images may span several calls.
- ``diffusion.DiffusionScheduler`` (diffusion models): step-level batching of image slots.

Both validate a request before it queues, so a bad one is rejected at once, and share the
queue policy (bound, priorities, deadlines) of ``batching.QueuePolicy``.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from genserve.serving import calls
from genserve.serving.batcher import DynamicBatcher, Slice
from genserve.serving.config import ModelSettings
from genserve.serving.domain import Request
from genserve.serving.engines import Engine
from genserve.serving.metrics import ModelMetrics


class Runner(Protocol):
    """What a scheduler needs of a model (``ModelRunner`` is one)."""

    name: str
    engines: Sequence[Engine]

    def validate(self, request: Request) -> object: ...

    def run_images(self, parts: Sequence[tuple[Request, int, int]], instance: int = 0) -> np.ndarray: ...


class ModelScheduler(Protocol):
    async def submit(self, request: Request, deadline: float | None = None) -> np.ndarray:
        """Run ``request`` to completion: uint8 images (N, H, W, C). ``deadline`` is a
        ``time.monotonic()`` time (the call's). Raises domain errors; a request the model does not
        take (Translate on a sampler, Generate on a translator) is InvalidArgument."""
        ...

    async def close(self) -> None:
        """Stop scheduling (after the server has drained its calls)."""
        ...


class ImageBatchScheduler:
    def __init__(
        self,
        runner: Runner,
        settings: ModelSettings,
        executor: concurrent.futures.Executor,
        metrics: ModelMetrics | None = None,
    ):
        self.runner = runner
        computes = [functools.partial(self._compute, i) for i in range(len(runner.engines))]
        policy = settings.batch_policy(runner.engines[0].max_batch_size)
        self.batcher = DynamicBatcher(runner.name, computes, policy, settings.queue_policy(), executor, metrics)

    def _compute(self, instance: int, slices: Sequence[Slice]) -> np.ndarray:
        return self.runner.run_images([(s.payload, s.start, s.stop) for s in slices], instance)

    async def submit(self, request: Request, deadline: float | None = None) -> np.ndarray:
        self.runner.validate(request)
        return await self.batcher.submit(
            request, request.num_images, request.priority, deadline, request.timeout, calls.trace()
        )

    async def close(self) -> None:
        await self.batcher.close()
