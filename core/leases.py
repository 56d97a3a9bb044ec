"""Lease policy: which shard leases a worker takes, steals, and when a lease counts as expired.

The rules (the Kinesis Client Library's, with shorter defaults and one fix):

- Expiry is judged on the *observer's* clock, never by comparing clocks of two machines: a lease
  whose counter has not moved for ``lease_duration_s`` of the observer's time is expired
  (:class:`ExpiryObserver`). An unowned lease (released on a clean shutdown) is free at once.
- A child shard is eligible only when every parent known to the lease table has ended (been
  checkpointed at ``SHARD_END``): parents before children, so per-key order survives resharding.
- Live workers are the owners of unexpired, unended leases plus the planner itself. Each worker
  aims at ``ceil(eligible / live workers)`` leases. It takes free or expired leases first; when
  there are none it *requests* leases from busier workers (``TakePlan.requests``): each owner
  finishes its batch, checkpoints and hands the lease over (``handoff_to``), so a planned move never
  replays a record. By count (nothing measured yet): up to its fair share, each from the worker
  holding the most, while that one holds at least two more. A worker with a request pending asks
  for nothing more, and a lease already requested is not requested again. A lease on its way to a
  worker counts as that worker's.
- **By load once load is measured.** Owners write each shard's records/s with their renewals. When
  the live leases carry at least ``LoadPolicy.min_rps`` in total, balancing moves load, not lease
  counts: a worker asks the busiest worker it can relieve for the *hottest* lease whose move narrows
  the gap between the two by at least ``band`` x the mean load per worker (hysteresis: a balanced
  state is left alone, and no move can be undone by the reverse move), and plans further moves on
  the loads that leaves, as long as each qualifies. A worker whose CPU is at or above
  ``cpu_ceiling`` asks for nothing (it has no spare CPU); an unknown CPU (not warmed up yet) counts
  as spare. Free and expired leases are taken as before, hottest first.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field

__all__ = [
    "ExpiryObserver",
    "LeaseView",
    "LoadPolicy",
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
    handoff_to: str | None = None  # a worker asked the owner for this lease
    load: float = 0.0  # records/s the owner last reported for this shard
    owner_cpu: float | None = None  # the owner's CPU (fraction of a core), None until warmed up


@dataclass(frozen=True, slots=True)
class TakePlan:
    take: tuple[LeaseView, ...] = ()
    requests: tuple[LeaseView, ...] = ()  # ask their owners to hand them over (graceful moves)
    target: int = 0
    live_workers: int = 1

    @property
    def empty(self) -> bool:
        return not self.take and not self.requests


_MAX_REQUESTS = 16  # handoff requests one planning round may make


@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """When and how far balancing by load goes (see the module doc)."""

    band: float = 0.2  # a move must narrow a gap by at least band x the mean load per worker
    min_rps: float = 1.0  # below this total, nothing is measured: balance by lease count
    cpu_ceiling: float = 0.8  # cores busy at or above which a worker asks for no more leases


@dataclass(slots=True)
class ExpiryObserver:
    """Remembers when each lease's counter last changed, on the observer's own (injected) clock."""

    lease_duration_s: float
    _seen: dict[str, tuple[int, str | None, float]] = field(default_factory=dict)
    _owned_since: dict[str, tuple[str | None, float]] = field(default_factory=dict)

    def observe(self, leases: Iterable[LeaseView], now: float) -> set[str]:
        """Record the current counters; return the ids of expired (or unowned) leases."""
        expired: set[str] = set()
        current: dict[str, tuple[int, str | None, float]] = {}
        owned: dict[str, tuple[str | None, float]] = {}
        for lease in leases:
            since = self._owned_since.get(lease.shard_id)
            # an owner seen from the first observation on counts as settled long ago
            owned[lease.shard_id] = (
                (lease.owner, -math.inf)
                if since is None
                else since
                if since[0] == lease.owner
                else (lease.owner, now)
            )
            seen = self._seen.get(lease.shard_id)
            if seen is None or seen[0] != lease.counter or seen[1] != lease.owner:
                seen = (lease.counter, lease.owner, now)
            current[lease.shard_id] = seen
            if lease.owner is None or now - seen[2] >= self.lease_duration_s:
                expired.add(lease.shard_id)
        self._seen = current
        self._owned_since = owned
        return expired

    def moved_within(self, seconds: float, now: float) -> set[str]:
        """Leases whose owner changed less than ``seconds`` ago (as of the last observation): their
        load figures are not yet the new owner's full-window measurement."""
        return {s for s, (_, since) in self._owned_since.items() if now - since < seconds}


def eligible(lease: LeaseView, by_id: dict[str, LeaseView]) -> bool:
    """Unended, and every parent the table knows has ended (a parent no longer listed is done)."""
    if lease.ended:
        return False
    return all(by_id[p].ended for p in lease.parents if p in by_id)


def _holder(lease: LeaseView, me: str, held_ids: set[str], expired: set[str]) -> str | None:
    """Whom a lease counts for: its live owner, or the worker it is being handed to."""
    if lease.shard_id in held_ids:
        return me
    if lease.owner is None or lease.shard_id in expired:
        return None
    if lease.handoff_to is not None and lease.owner != lease.handoff_to:
        return lease.handoff_to
    return lease.owner


def plan_takes(
    leases: Sequence[LeaseView],
    me: str,
    held: Iterable[str],
    expired: set[str],
    *,
    my_cpu: float | None = None,
    policy: LoadPolicy = LoadPolicy(),
    settling: Set[str] = frozenset(),
) -> TakePlan:
    """Decide this round's takes and handoff request for worker ``me`` holding the leases ``held``.

    ``settling``: leases that changed owner recently (``ExpiryObserver.moved_within``); a worker
    holding one (or receiving one) is neither asked nor asks by load until its figures settle, so a
    move is never answered by a move back on a half-measured load."""
    held_ids = set(held)
    by_id = {lease.shard_id: lease for lease in leases}
    ready = [lease for lease in leases if eligible(lease, by_id)]
    counts: Counter[str] = Counter()
    counts[me] = 0
    loads: dict[str, float] = {me: 0.0}
    pending = False
    for lease in ready:
        holder = _holder(lease, me, held_ids, expired)
        if holder is not None:
            counts[holder] += 1
            loads[holder] = loads.get(holder, 0.0) + max(lease.load, 0.0)
        if lease.handoff_to == me and lease.shard_id not in held_ids and lease.shard_id not in expired:
            pending = True
    workers = len(counts)
    target = math.ceil(len(ready) / workers) if ready else 0
    need = target - counts[me]
    free = sorted(
        (
            lease
            for lease in ready
            if lease.shard_id not in held_ids
            and (lease.owner is None or lease.owner == me or lease.shard_id in expired)
        ),
        key=lambda lease: (-lease.load, lease.shard_id),
    )
    if free and need > 0:
        return TakePlan(take=tuple(free[:need]), target=target, live_workers=workers)
    others = [(count, worker) for worker, count in counts.items() if worker != me]
    if free or pending or not others:
        return TakePlan(target=target, live_workers=workers)
    requests: list[LeaseView] = []
    if sum(loads.values()) >= policy.min_rps:  # by load: however many leases that makes
        if my_cpu is not None and my_cpu >= policy.cpu_ceiling:
            return TakePlan(target=target, live_workers=workers)  # no spare CPU
        margin = policy.band * sum(loads.values()) / workers
        unsettled = {_holder(x, me, held_ids, expired) for x in ready if x.shard_id in settling}
        if me in unsettled:
            return TakePlan(target=target, live_workers=workers)  # our own figures are not in yet
        # as many moves as each narrow a gap by the margin, planned on the loads they leave behind
        while len(requests) < _MAX_REQUESTS:
            chosen = _by_load(ready, me, loads, expired, margin, unsettled=unsettled, taken=requests)
            if chosen is None:
                break
            requests.append(chosen)
            loads[chosen.owner or ""] -= chosen.load
            loads[me] += chosen.load
        # as even as loads get: even out lease counts where that widens no load gap (idle leases,
        # and leases whose load is not measured yet), up to our fair share
        while not any(x.load > 0 for x in requests):
            mine = counts[me] + len(requests)
            most, victim = max((counts[w], w) for w in counts if w != me)
            if mine >= target or most - mine < 2:
                break
            cold = [
                lease
                for lease in ready
                if lease.owner == victim
                and lease.handoff_to is None
                and lease.shard_id not in expired
                and lease not in requests
                and loads[me] + lease.load <= loads[victim] - lease.load  # never widens the gap
            ]
            if not cold:
                break
            chosen = min(cold, key=lambda lease: (lease.load, lease.shard_id))
            requests.append(chosen)
            counts[victim] -= 1
            loads[victim] -= chosen.load
            loads[me] += chosen.load
        return TakePlan(requests=tuple(requests), target=target, live_workers=workers)
    # by count (nothing measured yet): up to our fair share, each from the worker with the most
    while need > len(requests):
        most, victim = max((counts[w], w) for w in counts if w != me)
        if most - (counts[me] + len(requests)) < 2:
            break
        theirs = sorted(
            (
                lease
                for lease in ready
                if lease.owner == victim
                and lease.handoff_to is None
                and lease.shard_id not in expired
                and lease not in requests
            ),
            key=lambda lease: lease.shard_id,
        )
        if not theirs:
            break
        requests.append(theirs[0])
        counts[victim] -= 1
    return TakePlan(requests=tuple(requests), target=target, live_workers=workers)


def _by_load(
    ready: Sequence[LeaseView],
    me: str,
    loads: dict[str, float],
    expired: set[str],
    margin: float,
    *,
    unsettled: Set[str | None],
    taken: Sequence[LeaseView],
) -> LeaseView | None:
    """The hottest lease of the busiest worker we can relieve whose move narrows our gap by ``margin``.

    Moving a lease of load ``l`` from a worker ``gap`` busier narrows the gap by ``2 min(l, gap - l)``;
    so ``margin / 2 <= l <= gap - margin / 2``, and the reverse move (which would narrow nothing) is
    never chosen afterwards."""
    mine = loads[me]
    for victim in sorted((w for w in loads if w != me), key=lambda w: (-loads[w], w)):
        gap = loads[victim] - mine
        if gap < margin:
            break
        if victim in unsettled:
            continue
        fits = [
            lease
            for lease in ready
            if lease.owner == victim
            and lease.handoff_to is None
            and lease.shard_id not in expired
            and lease not in taken
            and margin / 2 <= lease.load <= gap - margin / 2
        ]
        if fits:
            return max(fits, key=lambda lease: (lease.load, lease.shard_id))
    return None


def backoff_delay(attempt: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of the ceiling.

    ``attempt`` counts from 0; ``jitter`` is a random number in [0, 1) (injected, so tests are exact).
    Half the ceiling is kept so that retries never collapse to zero delay.
    """
    ceiling = min(cap_s, base_s * float(2 ** min(max(attempt, 0), 30)))
    return ceiling * (0.5 + 0.5 * max(0.0, min(1.0, jitter)))
