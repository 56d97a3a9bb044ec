"""Lease policy: which shard leases a worker takes, steals, and when a lease counts as expired.

The rules (the Kinesis Client Library's, with shorter defaults and one fix):

- Expiry is judged on the *observer's* clock, never by comparing clocks of two machines: a lease
  whose counter has not moved for ``lease_duration_s`` of the observer's time is expired
  (:class:`ExpiryObserver`). An unowned lease (released on a clean shutdown) is free at once.
- A child shard is eligible only when every parent known to the lease table has ended (been
  checkpointed at ``SHARD_END``): parents before children, so per-key order survives resharding.
- Live workers are the owners of unexpired, unended leases plus the planner itself. Each worker
  aims at ``ceil(eligible / live workers)`` leases. It takes free or expired leases first; when
  there are none and the most loaded worker holds at least two more than it, it steals one lease
  from that worker (one per round, so balancing never churns).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ExpiryObserver",
    "LeaseView",
    "TakePlan",
    "backoff_delay",
    "eligible",
    "plan_takes",
]


@dataclass(frozen=True, slots=True)
class LeaseView:
    """One row of the lease table, as a planner sees it."""

    shard_id: str
    owner: str | None
    counter: int
    ended: bool = False
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TakePlan:
    take: tuple[LeaseView, ...] = ()
    steal: LeaseView | None = None
    target: int = 0
    live_workers: int = 1

    @property
    def empty(self) -> bool:
        return not self.take and self.steal is None


@dataclass(slots=True)
class ExpiryObserver:
    """Remembers when each lease's counter last changed, on the observer's own (injected) clock."""

    lease_duration_s: float
    _seen: dict[str, tuple[int, str | None, float]] = field(default_factory=dict)

    def observe(self, leases: Iterable[LeaseView], now: float) -> set[str]:
        """Record the current counters; return the ids of expired (or unowned) leases."""
        expired: set[str] = set()
        current: dict[str, tuple[int, str | None, float]] = {}
        for lease in leases:
            seen = self._seen.get(lease.shard_id)
            if seen is None or seen[0] != lease.counter or seen[1] != lease.owner:
                seen = (lease.counter, lease.owner, now)
            current[lease.shard_id] = seen
            if lease.owner is None or now - seen[2] >= self.lease_duration_s:
                expired.add(lease.shard_id)
        self._seen = current
        return expired


def eligible(lease: LeaseView, by_id: dict[str, LeaseView]) -> bool:
    """Unended, and every parent the table knows has ended (a parent no longer listed is done)."""
    if lease.ended:
        return False
    return all(by_id[p].ended for p in lease.parents if p in by_id)


def plan_takes(leases: Sequence[LeaseView], me: str, held: Iterable[str], expired: set[str]) -> TakePlan:
    """Decide this round's takes and steal for worker ``me`` holding the leases ``held``."""
    held_ids = set(held)
    by_id = {lease.shard_id: lease for lease in leases}
    ready = [lease for lease in leases if eligible(lease, by_id)]
    counts: Counter[str] = Counter()
    counts[me] = 0
    for lease in ready:
        if lease.shard_id in held_ids:
            counts[me] += 1
        elif lease.owner is not None and lease.owner != me and lease.shard_id not in expired:
            counts[lease.owner] += 1
    workers = len(counts)
    target = math.ceil(len(ready) / workers) if ready else 0
    need = target - counts[me]
    if need <= 0:
        return TakePlan(target=target, live_workers=workers)
    free = sorted(
        (
            lease
            for lease in ready
            if lease.shard_id not in held_ids
            and (lease.owner is None or lease.owner == me or lease.shard_id in expired)
        ),
        key=lambda lease: lease.shard_id,
    )
    if free:
        return TakePlan(take=tuple(free[:need]), target=target, live_workers=workers)
    others = [(count, worker) for worker, count in counts.items() if worker != me]
    if not others:
        return TakePlan(target=target, live_workers=workers)
    most, victim = max(others)
    if most - counts[me] < 2:
        return TakePlan(target=target, live_workers=workers)
    theirs = sorted(
        (lease for lease in ready if lease.owner == victim and lease.shard_id not in expired),
        key=lambda lease: lease.shard_id,
    )
    return TakePlan(steal=theirs[0], target=target, live_workers=workers)


def backoff_delay(attempt: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of the ceiling.

    ``attempt`` counts from 0; ``jitter`` is a random number in [0, 1) (injected, so tests are exact).
    Half the ceiling is kept so that retries never collapse to zero delay.
    """
    ceiling = min(cap_s, base_s * float(2 ** min(max(attempt, 0), 30)))
    return ceiling * (0.5 + 0.5 * max(0.0, min(1.0, jitter)))
