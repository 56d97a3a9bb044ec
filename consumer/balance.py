"""What a worker measures for load-based balancing: records/s per held shard and its own CPU.

Both are written with the lease renewals (``LeaseTable.renew_all``) and read by every worker's
planner (``core.leases.plan_takes``). Rates are measured over a window of seconds
(``load_window_s``) so that one burst does not move a lease.

CPU is the process's CPU seconds per wall second (1.0 = one core busy), smoothed over renewal
rounds, and it
is **not reported until the worker has warmed up**: a fresh process spends its first seconds
importing, connecting and filling caches, and a planner that saw that transient would judge the
newcomer overloaded and move its leases back (a lease bouncing right after a scale-out). Until then
the worker reports ``None`` (unknown), which planners treat as "has spare CPU".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from consumer.leases import HeldLease

__all__ = ["CpuMeter", "LoadMeter"]

_SMOOTHING = 0.5  # weight of the newest interval in the CPU reading


@dataclass(slots=True)
class LoadMeter:
    """Records/s per held shard over the last ``window_s``, from the ``records_in`` the shard workers
    count on their lease. A shard is reported only once it has been read for a full window (a lease
    that just moved keeps its previous owner's figure in the table until then), so neither a short
    burst nor the catch-up right after a handoff reads as load."""

    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _samples: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    _leases: dict[str, HeldLease] = field(default_factory=dict)

    def rates(self, leases: Iterable[HeldLease]) -> dict[str, float]:
        now = self.clock()
        out: dict[str, float] = {}
        current: dict[str, deque[tuple[float, int]]] = {}
        held: dict[str, HeldLease] = {}
        for lease in leases:
            samples = self._samples.get(lease.shard_id)
            if samples is None or self._leases.get(lease.shard_id) is not lease:
                samples = deque()  # a lease (re)gained: its window starts now
            samples.append((now, lease.records_in))
            while len(samples) > 2 and now - samples[1][0] >= self.window_s:
                samples.popleft()  # the oldest kept is the newest sample at least a window old
            first_at, first_records = samples[0]
            if now - first_at >= self.window_s:
                out[lease.shard_id] = (lease.records_in - first_records) / (now - first_at)
            current[lease.shard_id] = samples
            held[lease.shard_id] = lease
        self._samples, self._leases = current, held
        return out


@dataclass(slots=True)
class CpuMeter:
    """The process's smoothed CPU (cores busy), ``None`` until ``warmup_s`` after the first reading."""

    warmup_s: float
    clock: Callable[[], float] = time.monotonic
    cpu_clock: Callable[[], float] = time.process_time
    _started: float | None = None
    _last: tuple[float, float] | None = None
    _value: float | None = None

    def reading(self) -> float | None:
        now, cpu = self.clock(), self.cpu_clock()
        if self._started is None:
            self._started = now
        last, self._last = self._last, (now, cpu)
        if now - self._started < self.warmup_s:
            return None  # the start-up transient (imports, connections, caches) is not load
        if last is None or now <= last[0] or last[0] - self._started < self.warmup_s:
            return self._value  # the first interval wholly after the warm-up is still running
        busy = max(0.0, (cpu - last[1]) / (now - last[0]))
        self._value = busy if self._value is None else _SMOOTHING * busy + (1 - _SMOOTHING) * self._value
        return self._value
