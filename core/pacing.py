"""When a supervising loop tries again, and when it says so: periodic steps that back off on failure.

A step that fails must not become due again at once (a loop that retries immediately against a
database that refuses connections spins a core and writes hundreds of lines a second). A
:class:`Periodic` step is due every ``interval_s`` while it succeeds; after a failure it is due again
after a capped, jittered exponential backoff (never longer than its interval, so liveness work such
as lease renewal keeps its rhythm through an outage). Its :class:`Outage` says when to log: the
first failure (an outage starts) and the first success after failures (it ended), never each attempt.

Pure: the caller passes the clock's reading and a random number in [0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.leases import backoff_delay

__all__ = ["Outage", "Periodic"]


@dataclass(slots=True)
class Outage:
    """Consecutive failures of one thing, and since when."""

    failures: int = 0
    since: float | None = None

    def failed(self, now: float) -> bool:
        """Count a failure; True when it is the first one (the outage starts: log it)."""
        self.failures += 1
        if self.since is None:
            self.since = now
            return True
        return False

    def succeeded(self, now: float) -> tuple[float, int] | None:
        """Count a success; ``(seconds down, failed attempts)`` when it ends an outage (log it)."""
        if self.since is None:
            return None
        ended = (now - self.since, self.failures)
        self.failures, self.since = 0, None
        return ended


@dataclass(slots=True)
class Periodic:
    """A step due every ``interval_s``; after failures, due again after a backoff of
    ``base_s * 2**(failures - 1)`` (half to all of it), at most ``interval_s``."""

    interval_s: float
    due: float
    base_s: float = 0.25
    outage: Outage = field(default_factory=Outage)

    def is_due(self, now: float) -> bool:
        return now >= self.due

    def succeeded(self, now: float) -> tuple[float, int] | None:
        """Schedule the next run; ``(seconds down, failed attempts)`` when this ends an outage."""
        self.due = now + self.interval_s
        return self.outage.succeeded(now)

    def failed(self, now: float, jitter: float) -> bool:
        """Schedule a retry after the backoff; True when this failure starts an outage."""
        first = self.outage.failed(now)
        cap = max(self.interval_s, self.base_s)
        self.due = now + backoff_delay(self.outage.failures - 1, self.base_s, cap, jitter)
        return first
