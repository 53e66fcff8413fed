"""The drain at shutdown: calls that run models are counted, and refused once the server drains."""

from __future__ import annotations

import asyncio

import pytest

from genserve.serving.errors import Unavailable
from genserve.serving.interceptors import Admission


def test_calls_are_counted_while_they_run():
    admission = Admission()
    with admission:
        with admission:
            assert admission.in_flight == 2
        assert admission.in_flight == 1
    assert admission.in_flight == 0


def test_a_closed_admission_refuses_new_calls_with_unavailable_and_lets_running_ones_finish():
    admission = Admission()
    with admission:
        admission.close()
        with pytest.raises(Unavailable, match="shutting down"), admission:
            pass
        with pytest.raises(Unavailable, match="retry on another replica"):
            admission.check()
        assert admission.in_flight == 1  # the refused call was never counted
    assert admission.in_flight == 0 and not admission.open


def test_wait_idle_returns_when_the_last_call_in_flight_ends():
    async def scenario() -> tuple[bool, float]:
        admission = Admission()
        release = asyncio.Event()

        async def call() -> None:
            with admission:
                await release.wait()

        calls = [asyncio.ensure_future(call()) for _ in range(3)]
        await asyncio.sleep(0)
        admission.close()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, release.set)
        started = loop.time()
        idle = await admission.wait_idle(timeout=10.0)
        await asyncio.gather(*calls)
        return idle, loop.time() - started

    idle, waited = asyncio.run(scenario())
    assert idle
    assert waited < 5.0  # well before the timeout: woken by the last call, not by the clock


def test_wait_idle_gives_up_at_its_timeout_while_a_call_still_runs():
    async def scenario() -> tuple[bool, int]:
        admission = Admission()
        admission.__enter__()  # a call that never ends
        admission.close()
        return await admission.wait_idle(timeout=0.05), admission.in_flight

    assert asyncio.run(scenario()) == (False, 1)


def test_wait_idle_with_no_call_in_flight_returns_at_once():
    assert asyncio.run(Admission().wait_idle(timeout=0.0))
