"""DynamicBatcher at run time: shared batches, order of results, bounded queue, deadlines,
cancellation, priorities, failures and engine instances.

The compute callables stand in for engines (the batcher knows nothing about models); each
returns rows that say which (request, unit) they were computed for, and records its calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from genserve.serving.batcher import DynamicBatcher, Slice
from genserve.serving.batching import BatchPolicy, QueuePolicy
from genserve.serving.errors import DeadlineExceeded, InternalError, InvalidArgument, Overloaded
from genserve.serving.metrics import Metrics

WAIT = 10.0


class Engine:
    """Rows ``[payload, unit]`` per unit; blocks while ``gate`` is closed; records every call."""

    def __init__(self, open_: bool = True, fail_on: object = None):
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.calls: list[list[tuple[object, int, int]]] = []
        self.entered = threading.Event()
        self.active = self.max_active = 0
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, slices: Sequence[Slice]) -> np.ndarray:
        with self._lock:
            self.calls.append([(s.payload, s.start, s.stop) for s in slices])
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            assert self.gate.wait(WAIT), "test never opened the gate"
            if any(s.payload == self.fail_on for s in slices):
                raise RuntimeError("engine exploded")
            return np.array([[s.payload, u] for s in slices for u in range(s.start, s.stop)], dtype=np.int64)
        finally:
            with self._lock:
                self.active -= 1

    def payloads(self) -> list[object]:
        return [p for call in self.calls for p, _, _ in call]


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def batcher(engines, executor, max_batch_size=8, delay=0.0, **queue) -> DynamicBatcher:
    engines = engines if isinstance(engines, list) else [engines]
    return DynamicBatcher("m", engines, BatchPolicy(max_batch_size, delay), QueuePolicy(**queue), executor)


async def until(predicate, what: str) -> None:
    for _ in range(int(WAIT / 0.001)):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


def rows(payload: int, n: int) -> np.ndarray:
    return np.array([[payload, u] for u in range(n)])


def test_concurrent_requests_share_engine_calls_and_each_gets_its_own_rows_in_order(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=8)
        first = asyncio.create_task(b.submit(1, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)  # the engine is busy with request 1
        waiting = [asyncio.create_task(b.submit(p, n)) for p, n in ((2, 3), (3, 7), (4, 2))]
        await until(lambda: b.queued == 3, "three requests queued")
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT)
        for (p, n), r in zip(((1, 1), (2, 3), (3, 7), (4, 2)), results, strict=True):
            np.testing.assert_array_equal(r, rows(p, n))
        # 12 queued units with a limit of 8: one full batch, then the rest.
        assert [sum(stop - start for _, start, stop in call) for call in engine.calls] == [1, 8, 4]
        assert engine.calls[1] == [(2, 0, 3), (3, 0, 5)]
        assert engine.calls[2] == [(3, 5, 7), (4, 0, 2)]
        await b.close()

    asyncio.run(scenario())


def test_a_full_queue_rejects_at_once_with_overloaded(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1, max_queue_size=2)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        queued = [asyncio.create_task(b.submit(p, 1)) for p in (1, 2)]
        await until(lambda: b.queued == 2, "two requests queued")
        with pytest.raises(Overloaded, match="2 requests queued"):
            await asyncio.wait_for(b.submit(3, 1), WAIT)
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *queued), WAIT)
        assert 3 not in engine.payloads()
        await b.close()

    asyncio.run(scenario())


def test_expired_request_never_reaches_the_engine(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await asyncio.wait_for(b.submit(1, 1, timeout=0.05), WAIT)
        assert b.queued == 0
        engine.gate.set()
        await asyncio.wait_for(running, WAIT)
        assert engine.payloads() == [0]
        await b.close()

    asyncio.run(scenario())


def test_the_earlier_of_call_deadline_and_request_timeout_counts(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        loop = asyncio.get_running_loop()
        soon = loop.time() + 0.05  # the batcher's clock is the loop's (time.monotonic)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(b.submit(1, 1, deadline=soon, timeout=60.0), WAIT)
        engine.gate.set()
        await asyncio.wait_for(running, WAIT)
        await b.close()

    asyncio.run(scenario())


def test_a_default_timeout_applies_to_requests_without_a_deadline(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1, default_timeout=0.05)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(b.submit(1, 1), WAIT)
        engine.gate.set()
        await running
        await b.close()

    asyncio.run(scenario())


def test_a_cancelled_call_leaves_the_queue_at_once_and_is_never_computed(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        waiting = asyncio.create_task(b.submit(1, 4))
        await until(lambda: b.queued == 1, "queued")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert b.queued == 0 and b.pending == 1
        engine.gate.set()
        await asyncio.wait_for(running, WAIT)
        await asyncio.sleep(0.01)
        assert engine.payloads() == [0]
        await b.close()

    asyncio.run(scenario())


def test_a_cancelled_request_stops_after_the_units_already_running(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=2)
        call = asyncio.create_task(b.submit(7, 10))  # five batches of two
        await asyncio.to_thread(engine.entered.wait, WAIT)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        engine.gate.set()
        follow = await asyncio.wait_for(b.submit(8, 1), WAIT)
        np.testing.assert_array_equal(follow, rows(8, 1))
        assert engine.payloads() == [7, 8], "units of the cancelled request ran after the cancel"
        await b.close()

    asyncio.run(scenario())


def test_higher_priority_requests_run_before_lower_ones_queued_earlier(executor):
    async def scenario() -> None:
        engine = Engine(open_=False)
        b = batcher(engine, executor, max_batch_size=1, priority_levels=3, default_priority=2)
        running = asyncio.create_task(b.submit(0, 1))
        await asyncio.to_thread(engine.entered.wait, WAIT)
        low, default, high = 30, 20, 10  # payloads
        low = asyncio.create_task(b.submit(low, 1, priority=3))
        default = asyncio.create_task(b.submit(default, 1))
        high = asyncio.create_task(b.submit(high, 1, priority=1))
        await until(lambda: b.queued == 3, "queued")
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(running, low, default, high), WAIT)
        assert engine.payloads() == [0, 10, 20, 30]
        with pytest.raises(InvalidArgument, match=r"priority must be in \[0, 3\]"):
            await b.submit(40, 1, priority=4)
        await b.close()

    asyncio.run(scenario())


def test_an_engine_failure_fails_its_batch_as_internal_and_the_next_batch_runs(executor):
    async def scenario() -> None:
        engine = Engine(fail_on=13)
        b = batcher(engine, executor)
        with pytest.raises(InternalError, match="failed to run a batch"):
            await asyncio.wait_for(b.submit(13, 2), WAIT)
        np.testing.assert_array_equal(await asyncio.wait_for(b.submit(14, 2), WAIT), rows(14, 2))
        await b.close()

    asyncio.run(scenario())


def test_engine_instances_run_batches_concurrently(executor):
    async def scenario() -> None:
        engines = [Engine(open_=False), Engine(open_=False)]
        b = batcher(engines, executor, max_batch_size=1)
        calls = [asyncio.create_task(b.submit(p, 1)) for p in range(2)]
        assert await asyncio.to_thread(engines[0].entered.wait, WAIT), "instance 0 never ran"
        assert await asyncio.to_thread(engines[1].entered.wait, WAIT), "instance 1 never ran while 0 was busy"
        assert [e.active for e in engines] == [1, 1]  # both in a call at once: neither gate is open yet
        for e in engines:
            e.gate.set()
        await asyncio.wait_for(asyncio.gather(*calls), WAIT)
        assert [e.max_active for e in engines] == [1, 1]  # one batch per instance at a time
        await b.close()

    asyncio.run(scenario())


def test_metrics_count_batches_units_and_queue_state(executor):
    async def scenario() -> Metrics:
        metrics = Metrics()
        engine = Engine()
        b = DynamicBatcher("m", [engine], BatchPolicy(8), QueuePolicy(), executor, metrics.for_model("m"))
        await asyncio.gather(b.submit(1, 3), b.submit(2, 2))
        await b.close()
        return metrics

    text = asyncio.run(scenario()).exposition().decode()
    assert 'genserve_computed_units_total{model="m"} 5.0' in text
    assert 'genserve_pending_requests{model="m"} 0.0' in text
    assert 'genserve_batch_size_count{model="m"}' in text
