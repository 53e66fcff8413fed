"""The batching decision as a pure function: sizes, delay, preferred sizes, deadlines, priorities.

No threads, no sleeps: the clock is an argument (after TGI's ``queue.rs`` tests)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genserve.serving.batching import BatchPolicy, Pending, Take, deadlines_only, next_batch

DELAY = 0.002


def policy(max_batch_size: int = 8, delay: float = DELAY, preferred: tuple[int, ...] = ()) -> BatchPolicy:
    return BatchPolicy(max_batch_size, delay, preferred)


def test_an_empty_queue_runs_nothing_and_waits_for_arrivals():
    decision = next_batch([], policy(), now=5.0)
    assert decision.batch == () and decision.expired == () and decision.wake_at is None


def test_a_full_batch_goes_at_once_without_waiting_for_the_delay():
    queue = [Pending(0, 5, arrival=1.0), Pending(1, 5, arrival=1.0)]
    decision = next_batch(queue, policy(max_batch_size=8), now=1.0)
    assert decision.batch == (Take(0, 5), Take(1, 3))  # the rest of request 1 waits for the next batch


def test_a_small_batch_waits_for_the_queue_delay_of_its_oldest_request():
    queue = [Pending(0, 1, arrival=1.0), Pending(1, 2, arrival=1.001)]
    waiting = next_batch(queue, policy(), now=1.001)
    assert waiting.batch == ()
    assert waiting.wake_at == pytest.approx(1.0 + DELAY)
    due = next_batch(queue, policy(), now=1.0 + DELAY)
    assert due.batch == (Take(0, 1), Take(1, 2))


def test_zero_delay_runs_whatever_is_queued_at_once():
    decision = next_batch([Pending(0, 1, arrival=3.0)], policy(delay=0.0), now=3.0)
    assert decision.batch == (Take(0, 1),)


def test_a_request_larger_than_the_batch_limit_spans_batches_in_order():
    queue = [Pending(0, 20, arrival=0.0)]
    first = next_batch(queue, policy(max_batch_size=8), now=0.0)
    assert first.batch == (Take(0, 8),)
    rest = next_batch([Pending(0, 12, arrival=0.0)], policy(max_batch_size=8), now=0.0)
    assert rest.batch == (Take(0, 8),)
    last = next_batch([Pending(0, 4, arrival=0.0)], policy(max_batch_size=8), now=DELAY)
    assert last.batch == (Take(0, 4),)


def test_reaching_the_largest_preferred_size_dispatches_before_the_delay():
    queue = [Pending(i, 1, arrival=0.0) for i in range(5)]
    decision = next_batch(queue, policy(max_batch_size=8, preferred=(2, 4)), now=0.0)
    assert decision.batch_size == 4


def test_below_every_preferred_size_the_batch_waits_then_takes_all():
    queue = [Pending(0, 1, arrival=0.0)]
    assert next_batch(queue, policy(preferred=(2, 4)), now=0.0).batch == ()
    assert next_batch(queue, policy(preferred=(2, 4)), now=DELAY).batch_size == 1


def test_when_the_delay_expires_the_largest_preferred_size_that_fits_is_taken():
    queue = [Pending(i, 1, arrival=0.0) for i in range(3)]
    decision = next_batch(queue, policy(max_batch_size=8, preferred=(2, 4)), now=DELAY)
    assert decision.batch_size == 2


def test_an_expired_request_is_reported_and_never_batched():
    queue = [Pending(0, 2, arrival=0.0, deadline=1.0), Pending(1, 1, arrival=0.5)]
    decision = next_batch(queue, policy(delay=0.0), now=1.0)
    assert decision.expired == (0,)
    assert decision.batch == (Take(1, 1),)


def test_only_expired_requests_leave_nothing_to_run():
    decision = next_batch([Pending(0, 2, arrival=0.0, deadline=0.1)], policy(), now=0.2)
    assert decision.expired == (0,) and decision.batch == () and decision.wake_at is None


def test_the_wait_ends_early_at_a_deadline_before_the_delay():
    queue = [Pending(0, 1, arrival=0.0, deadline=0.001)]
    decision = next_batch(queue, policy(delay=0.010), now=0.0)
    assert decision.batch == ()
    assert decision.wake_at == pytest.approx(0.001)


def test_with_every_instance_busy_only_deadlines_are_enforced_and_the_next_one_wakes_the_loop():
    queue = [
        Pending(0, 4, arrival=0.0, deadline=1.0),
        Pending(1, 64, arrival=0.0),  # a full batch, but no instance to run it
        Pending(2, 1, arrival=0.5, deadline=3.0),
        Pending(3, 1, arrival=0.5, deadline=2.0),
    ]
    decision = deadlines_only(queue, now=1.0)
    assert decision.expired == (0,) and decision.batch == ()
    assert decision.wake_at == 2.0
    assert deadlines_only([Pending(0, 1, arrival=0.0)], now=1.0).wake_at is None  # arrivals or a freed instance


def test_higher_priority_requests_go_first_even_when_they_arrived_later():
    queue = [Pending(0, 4, priority=2, arrival=0.0), Pending(1, 4, priority=1, arrival=0.5)]
    decision = next_batch(queue, policy(max_batch_size=6), now=1.0)
    assert decision.batch == (Take(1, 4), Take(0, 2))


def test_within_a_priority_level_requests_go_in_arrival_order():
    queue = [Pending(2, 1, arrival=0.2), Pending(0, 1, arrival=0.0), Pending(1, 1, arrival=0.1)]
    decision = next_batch(queue, policy(max_batch_size=2), now=1.0)
    assert decision.batch == (Take(0, 1), Take(1, 1))


def test_invalid_policies_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(0)
    with pytest.raises(ValueError, match="max_queue_delay"):
        BatchPolicy(4, -1.0)
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        BatchPolicy(4, 0.0, (8,))


pendings = st.lists(
    st.builds(
        Pending,
        id=st.integers(0, 10_000),
        units=st.integers(0, 40),
        priority=st.integers(1, 3),
        arrival=st.floats(0, 1),
        deadline=st.one_of(st.none(), st.floats(0, 2)),
    ),
    max_size=20,
    unique_by=lambda p: p.id,
)


@given(
    queue=pendings,
    max_batch_size=st.integers(1, 64),
    delay=st.floats(0, 0.5),
    now=st.floats(0, 2),
)
def test_every_decision_respects_the_limits(queue, max_batch_size, delay, now):
    decision = next_batch(queue, BatchPolicy(max_batch_size, delay), now)
    by_id = {p.id: p for p in queue}
    assert decision.batch_size <= max_batch_size
    for take in decision.batch:
        p = by_id[take.id]
        assert 1 <= take.units <= p.units
        assert p.deadline is None or p.deadline > now, "an expired request was batched"
        assert take.id not in decision.expired
    assert len({t.id for t in decision.batch}) == len(decision.batch)
    live_units = sum(p.units for p in queue if p.deadline is None or p.deadline > now)
    if not decision.batch and live_units:
        assert decision.wake_at is not None and decision.wake_at > now, "work is queued but nothing will wake"
    if decision.batch and live_units >= max_batch_size:
        assert decision.batch_size == max_batch_size
