"""RequestScheduler (diffusion models): one request per engine instance at a time, validation
before queueing, cancellation of a running request at its next engine call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from genserve.serving.config import ModelSettings
from genserve.serving.domain import GenerateRequest
from genserve.serving.errors import Cancelled, InvalidArgument
from genserve.serving.scheduler import RequestScheduler

WAIT = 10.0  # seconds before a test gives up on an event that should come at once


class GatedRunner:
    """A stand-in model whose request ``seed`` runs until ``gate[seed]`` opens, like a long engine loop."""

    name = "gated"
    engines = [None]  # one engine instance

    def __init__(self, seeds: list[int]):
        self.gate = {s: threading.Event() for s in seeds}
        self.entered = {s: threading.Event() for s in seeds}
        self.order: list[int] = []
        self.stopped: list[int] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def validate(self, request: GenerateRequest) -> None:
        if request.num_images < 1:
            raise InvalidArgument("num_images must be in [1, 4]")

    def generate(
        self, request: GenerateRequest, cancelled: threading.Event | None = None, instance: int = 0
    ) -> np.ndarray:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.order.append(request.seed)
        self.entered[request.seed].set()
        try:
            while not self.gate[request.seed].wait(0.005):  # one "engine call" per wait
                if cancelled is not None and cancelled.is_set():
                    self.stopped.append(request.seed)
                    raise Cancelled("cancelled")
            return np.full((request.num_images, 1, 1, 1), request.seed, dtype=np.uint8)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def request(seed: int, num_images: int = 1) -> GenerateRequest:
    return GenerateRequest("gated", num_images, seed=seed)


async def entered(runner: GatedRunner, seed: int) -> None:
    assert await asyncio.to_thread(runner.entered[seed].wait, WAIT), f"request {seed} never started"


def test_requests_to_one_model_run_one_at_a_time_in_arrival_order(executor):
    async def scenario() -> None:
        runner = GatedRunner([1, 2, 3])
        scheduler = RequestScheduler(runner, ModelSettings(), executor)
        tasks = [asyncio.create_task(scheduler.submit(request(s))) for s in (1, 2, 3)]
        await entered(runner, 1)
        for _ in range(10):
            await asyncio.sleep(0)  # let the other two reach the queue
        assert scheduler.batcher.pending == 3
        assert runner.order == [1]
        for gate in runner.gate.values():
            gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert [int(r[0, 0, 0, 0]) for r in results] == [1, 2, 3]
        assert runner.order == [1, 2, 3]
        assert runner.max_active == 1
        assert scheduler.batcher.pending == 0

    asyncio.run(scenario())


def test_an_invalid_request_is_rejected_without_waiting_for_the_busy_model(executor):
    async def scenario() -> None:
        runner = GatedRunner([1])
        scheduler = RequestScheduler(runner, ModelSettings(), executor)
        busy = asyncio.create_task(scheduler.submit(request(1)))
        await entered(runner, 1)
        with pytest.raises(InvalidArgument):
            await asyncio.wait_for(scheduler.submit(request(2, num_images=0)), WAIT)
        runner.gate[1].set()
        await asyncio.wait_for(busy, WAIT)

    asyncio.run(scenario())


def test_a_cancelled_request_stops_its_run_and_the_next_one_never_overlaps_it(executor):
    async def scenario() -> None:
        runner = GatedRunner([1, 2])
        scheduler = RequestScheduler(runner, ModelSettings(), executor)
        first = asyncio.create_task(scheduler.submit(request(1)))
        await entered(runner, 1)
        runner.gate[2].set()
        second = asyncio.create_task(scheduler.submit(request(2)))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, WAIT)
        assert int((await asyncio.wait_for(second, WAIT))[0, 0, 0, 0]) == 2
        assert runner.stopped == [1]
        assert runner.max_active == 1

    asyncio.run(scenario())


def test_a_request_cancelled_while_waiting_never_reaches_the_model(executor):
    async def scenario() -> None:
        runner = GatedRunner([1, 2])
        scheduler = RequestScheduler(runner, ModelSettings(), executor)
        first = asyncio.create_task(scheduler.submit(request(1)))
        await entered(runner, 1)
        waiting = asyncio.create_task(scheduler.submit(request(2)))
        await asyncio.sleep(0)  # let it reach the queue
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        runner.gate[1].set()
        await asyncio.wait_for(first, WAIT)
        assert runner.order == [1]
        assert scheduler.batcher.pending == 0

    asyncio.run(scenario())
