"""The batching decision, as a pure function: queue + policy + clock -> what runs next.

``next_batch`` is the whole policy of the dynamic batcher (Triton's semantics, see
``BatchPolicy``); ``batcher.DynamicBatcher`` only feeds it the queue and carries out its
decisions. It reads no clock, starts no thread and sleeps never, so its tests need none.

``QueuePolicy`` is the admission side, pure too: queue bound, priority levels and deadlines,
shared by the one-pass batcher and the diffusion scheduler.

A request is a number of *units* (images of a one-pass model, or one whole request for a
model served request by request); a request may span several batches, and a batch may hold
parts of several requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from genserve.serving.errors import DeadlineExceeded, InvalidArgument, Overloaded

HIGHEST_PRIORITY = 1  # Triton's convention: level 1 runs first, larger numbers later


@dataclass(frozen=True)
class BatchPolicy:
    """How a model's batches are formed.

    - A batch never exceeds ``max_batch_size`` units.
    - It goes at once when the queue holds ``max_batch_size`` units, or the largest of the
      ``preferred_batch_sizes``; otherwise it waits until the oldest request has waited
      ``max_queue_delay`` seconds, then takes the largest preferred size that the queue can
      fill, or everything queued if none.
    - Units are taken by priority level (1 first), then by arrival.
    """

    max_batch_size: int
    max_queue_delay: float = 0.0  # seconds
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must be >= 0, got {self.max_queue_delay}")
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes must lie in [1, max_batch_size={self.max_batch_size}], got {bad}")


@dataclass(frozen=True)
class Pending:
    """A queued request as the policy sees it."""

    id: int
    units: int  # units not yet handed to a batch
    priority: int = HIGHEST_PRIORITY
    arrival: float = 0.0  # clock time the request entered the queue
    deadline: float | None = None  # clock time after which its result is useless


@dataclass(frozen=True)
class Take:
    """``units`` units of request ``id``, the next ones in its order."""

    id: int
    units: int


@dataclass(frozen=True)
class Decision:
    expired: tuple[int, ...] = ()  # requests whose deadline has passed: fail them, never compute them
    batch: tuple[Take, ...] = ()  # run this now (empty: nothing to run yet)
    wake_at: float | None = None  # decide again at this time if nothing arrives (None: wait for arrivals)

    @property
    def batch_size(self) -> int:
        return sum(t.units for t in self.batch)


class Queued(Protocol):
    """What deciding expiry needs of a queued request (a ``Pending``, or the schedulers' entries)."""

    @property
    def id(self) -> int: ...

    @property
    def deadline(self) -> float | None: ...


def expired_ids(queue: Iterable[Queued], now: float) -> tuple[int, ...]:
    """The requests whose deadline has passed at ``now``: fail them, never compute them."""
    return tuple(p.id for p in queue if p.deadline is not None and p.deadline <= now)


def deadlines_only(queue: Iterable[Queued], now: float) -> Decision:
    """The decision while no engine instance is free: no batch (planning one would be in vain),
    only the expired requests, and a wake-up at the earliest deadline still ahead."""
    queue = list(queue)
    ahead = [p.deadline for p in queue if p.deadline is not None and p.deadline > now]
    return Decision(expired=expired_ids(queue, now), wake_at=min(ahead, default=None))


def next_batch(queue: Sequence[Pending], policy: BatchPolicy, now: float) -> Decision:
    """The next batch to run on a free engine instance, given the queue at time ``now``."""
    expired = expired_ids(queue, now)
    live = [p for p in queue if p.units > 0 and (p.deadline is None or p.deadline > now)]
    if not live:
        return Decision(expired=expired)
    queued = sum(p.units for p in live)
    oldest = min(p.arrival for p in live)
    delay_over = now >= oldest + policy.max_queue_delay
    preferred = sorted(policy.preferred_batch_sizes)

    if queued >= policy.max_batch_size:
        size = policy.max_batch_size
    elif preferred and queued >= preferred[-1]:
        size = preferred[-1]
    elif delay_over:
        fits = [s for s in preferred if s <= queued]
        size = fits[-1] if fits else queued
    else:
        deadlines = [p.deadline for p in live if p.deadline is not None]
        return Decision(expired=expired, wake_at=min([oldest + policy.max_queue_delay, *deadlines]))

    batch, room = [], size
    for p in sorted(live, key=lambda p: (p.priority, p.arrival, p.id)):
        if room == 0:
            break
        take = min(room, p.units)
        batch.append(Take(p.id, take))
        room -= take
    return Decision(expired=expired, batch=tuple(batch))


@dataclass(frozen=True)
class QueuePolicy:
    """Admission and priorities (Triton's ``max_queue_size``, ``priority_levels``,
    ``default_priority_level`` and ``default_timeout_microseconds``)."""

    max_queue_size: int = 128  # requests waiting to start; 0 = unbounded
    priority_levels: int = 1  # requests carry 1 (first) .. priority_levels; 0 = the default level
    default_priority: int = 1
    default_timeout: float | None = None  # seconds, for requests that bring no deadline

    def admit(self, model: str, queued: int, priority: int) -> int:
        """The priority level a new request gets; raises InvalidArgument or Overloaded."""
        if not 0 <= priority <= self.priority_levels:
            raise InvalidArgument(
                f"priority must be in [0, {self.priority_levels}] for model {model} (0 = default, "
                f"{HIGHEST_PRIORITY} = first), got {priority}"
            )
        if self.max_queue_size and queued >= self.max_queue_size:
            raise Overloaded(
                f"model {model} has {queued} requests queued, its limit; retry after a backoff, or on another replica"
            )
        return priority or self.default_priority

    def deadline(self, now: float, deadline: float | None, timeout: float | None) -> float | None:
        """The earlier of the call's deadline and ``now + timeout`` (or the default timeout if neither)."""
        if timeout is None and deadline is None:
            timeout = self.default_timeout
        deadlines = [d for d in (deadline, None if timeout is None else now + timeout) if d is not None]
        return min(deadlines) if deadlines else None


def deadline_error(model: str, waited: float, started: int = 0, units: int = 0) -> DeadlineExceeded:
    part = f", {started} of its {units} units started" if started else ""
    return DeadlineExceeded(
        f"the request's deadline passed after {waited:.3f} s in the queue of model {model}{part}; it was not run"
    )
