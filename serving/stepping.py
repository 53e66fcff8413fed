"""Step-level (continuous) batching of diffusion requests, as a pure function.

The running batch is a set of *slots*, one per image of a request, each at its own step of its
own schedule. Between two engine calls (a step boundary) ``plan_iteration`` decides which slots
leave (finished, cancelled, past their deadline) and which waiting images join, from the slots,
the queue and a clock passed in. ``diffusion.DiffusionScheduler`` carries the plan out.

With ``JoinPolicy.REQUEST`` a waiting request joins only once the running batch has emptied:
that is request-level batching (a request arriving while a batch samples waits for all of its
steps), kept as a server flag to measure what step-level joins buy.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from genserve.serving.batching import BatchPolicy, Pending, Take, expired_ids, next_batch


class JoinPolicy(enum.Enum):
    STEP = "step"  # waiting images join at the next step boundary, as slots free up
    REQUEST = "request"  # waiting images join only when the running batch is empty


@dataclass(frozen=True)
class Slot:
    """One image of one request in the running batch."""

    request: int
    image: int
    step: int  # steps done
    steps: int  # steps of its request's schedule
    deadline: float | None = None


@dataclass(frozen=True)
class IterationPlan:
    finished: tuple[int, ...] = ()  # positions of slots whose last step is done: return their images
    dropped: tuple[int, ...] = ()  # positions of slots whose request was cancelled or expired
    expired: tuple[int, ...] = ()  # request ids (running or waiting) whose deadline has passed
    joins: tuple[Take, ...] = ()  # images of waiting requests that start now, in order
    wake_at: float | None = None  # nothing to run: decide again then (a waiting deadline), or on arrivals

    def running_after(self, slots: int) -> int:
        return slots - len(self.finished) - len(self.dropped) + sum(t.units for t in self.joins)


def plan_iteration(
    slots: Sequence[Slot],
    waiting: Sequence[Pending],
    cancelled: Collection[int],
    max_active_slots: int,
    now: float,
    join: JoinPolicy = JoinPolicy.STEP,
) -> IterationPlan:
    """What happens at this step boundary. ``cancelled``: ids of requests whose callers left."""
    expired_running = {s.request for s in slots if s.deadline is not None and s.deadline <= now}
    gone = expired_running | set(cancelled)
    dropped = tuple(i for i, s in enumerate(slots) if s.request in gone)
    finished = tuple(i for i, s in enumerate(slots) if s.request not in gone and s.step >= s.steps)
    remaining = len(slots) - len(dropped) - len(finished)
    free = max_active_slots - remaining

    live = [p for p in waiting if p.id not in cancelled]
    expired_waiting = expired_ids(live, now)
    joins: tuple[Take, ...] = ()
    if free > 0 and not (join is JoinPolicy.REQUEST and remaining > 0):
        joins = next_batch(live, BatchPolicy(free, 0.0), now).batch
    wake_at = None
    if remaining == 0 and not joins:
        wake_at = min((p.deadline for p in live if p.deadline is not None and p.deadline > now), default=None)
    return IterationPlan(
        finished=finished,
        dropped=dropped,
        expired=tuple(sorted(expired_running)) + expired_waiting,
        joins=joins,
        wake_at=wake_at,
    )
