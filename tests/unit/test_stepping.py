"""Step-level batching decisions as a pure function: join, finish, cancel, expire, mixed step counts."""

from __future__ import annotations

from genserve.serving.batching import Pending, Take
from genserve.serving.stepping import JoinPolicy, Slot, plan_iteration


def slots(*specs: tuple[int, int, int, int]) -> list[Slot]:
    """(request, image, step, steps) tuples -> slots."""
    return [Slot(r, i, step, steps) for r, i, step, steps in specs]


def test_waiting_images_join_free_slots_at_the_step_boundary():
    running = slots((0, 0, 3, 10), (0, 1, 3, 10))
    plan = plan_iteration(running, [Pending(1, 3, arrival=1.0)], (), max_active_slots=4, now=2.0)
    assert plan.joins == (Take(1, 2),)  # two free slots: two of its three images now, one later
    assert plan.finished == () and plan.dropped == ()
    assert plan.running_after(len(running)) == 4


def test_a_full_batch_admits_nobody():
    running = slots((0, 0, 3, 10), (0, 1, 3, 10))
    plan = plan_iteration(running, [Pending(1, 1)], (), max_active_slots=2, now=0.0)
    assert plan.joins == ()


def test_finished_slots_leave_and_their_places_go_to_waiting_images_in_the_same_boundary():
    running = slots((0, 0, 20, 20), (1, 0, 7, 50))  # mixed step counts: request 0 is done, 1 is not
    plan = plan_iteration(running, [Pending(2, 5)], (), max_active_slots=2, now=0.0)
    assert plan.finished == (0,)
    assert plan.joins == (Take(2, 1),)


def test_every_slot_runs_its_own_step_count():
    running = slots((0, 0, 10, 10), (1, 0, 10, 100), (2, 0, 100, 100))
    plan = plan_iteration(running, [], (), max_active_slots=8, now=0.0)
    assert plan.finished == (0, 2)


def test_a_cancelled_request_leaves_every_slot_it_holds_and_never_joins():
    running = slots((0, 0, 3, 10), (1, 0, 3, 10), (0, 1, 3, 10))
    plan = plan_iteration(running, [Pending(0, 2), Pending(3, 1)], cancelled={0}, max_active_slots=3, now=0.0)
    assert plan.dropped == (0, 2)
    assert plan.joins == (Take(3, 1),)


def test_a_running_request_past_its_deadline_is_expired_and_its_slots_freed():
    running = [Slot(0, 0, 3, 10, deadline=1.0), Slot(1, 0, 3, 10, deadline=9.0)]
    plan = plan_iteration(running, [], (), max_active_slots=4, now=1.0)
    assert plan.expired == (0,)
    assert plan.dropped == (0,)


def test_a_waiting_request_past_its_deadline_is_expired_and_never_joins():
    plan = plan_iteration([], [Pending(5, 2, deadline=0.5), Pending(6, 1)], (), max_active_slots=4, now=1.0)
    assert plan.expired == (5,)
    assert plan.joins == (Take(6, 1),)


def test_higher_priority_waiting_requests_join_first():
    waiting = [Pending(1, 2, priority=2, arrival=0.0), Pending(2, 2, priority=1, arrival=1.0)]
    plan = plan_iteration(slots((0, 0, 1, 5)), waiting, (), max_active_slots=3, now=2.0)
    assert plan.joins == (Take(2, 2),)


def test_request_level_batching_joins_only_when_the_batch_has_emptied():
    running = slots((0, 0, 3, 10))
    busy = plan_iteration(running, [Pending(1, 1)], (), max_active_slots=8, now=0.0, join=JoinPolicy.REQUEST)
    assert busy.joins == ()
    done = slots((0, 0, 10, 10))
    emptied = plan_iteration(done, [Pending(1, 1)], (), max_active_slots=8, now=0.0, join=JoinPolicy.REQUEST)
    assert emptied.finished == (0,) and emptied.joins == (Take(1, 1),)


def test_an_idle_scheduler_sleeps_until_the_first_waiting_deadline_or_an_arrival():
    assert plan_iteration([], [], (), max_active_slots=4, now=0.0).wake_at is None
    waiting = [Pending(1, 1, deadline=5.0)]
    plan = plan_iteration(slots((0, 0, 1, 5)), waiting, (), max_active_slots=1, now=0.0)
    assert plan.joins == () and plan.wake_at is None  # a step is running: the next boundary decides again
