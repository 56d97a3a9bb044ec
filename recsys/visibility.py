"""Put -> visible: when each event put on the stream first shows in ``GET /recommendations/{id}``.

The demo's summary (``recsys demo --events N``) and ``python -m bench latency`` use it: a
:class:`Tracker` of the events put, and :func:`watch_api`, which polls the API for the customers
whose events are not visible yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Sent", "Tracker", "Watched", "percentile", "watch_api"]


@dataclass
class Sent:
    event_id: str
    customer: int
    put_at: float  # time.time() when PutRecords acknowledged it


@dataclass
class Tracker:
    """Events put, and when the API first showed each (or a newer event of the same customer)."""

    sent: list[Sent] = field(default_factory=list)
    pending: dict[int, list[Sent]] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)

    def add(self, items: Sequence[Sent]) -> None:
        self.sent.extend(items)
        for item in items:
            self.pending.setdefault(item.customer, []).append(item)

    def seen(self, customer: int, event_id: str | None, at: float) -> None:
        waiting = self.pending.get(customer)
        if not waiting or event_id is None:
            return
        ids = [s.event_id for s in waiting]
        if event_id not in ids:
            return
        upto = ids.index(event_id) + 1
        for item in waiting[:upto]:
            self.latency_s[item.event_id] = at - item.put_at
        del waiting[:upto]
        if not waiting:
            del self.pending[customer]


class Watched(Protocol):
    """What :func:`watch_api` reports to: customers with events not yet visible, and a callback."""

    @property
    def pending(self) -> Mapping[int, object]: ...

    def seen(self, customer: int, event_id: str | None, at: float) -> None: ...


async def watch_api(
    url: str,
    tracker: Watched,
    stop: asyncio.Event,
    *,
    clock: Callable[[], float] = time.time,
    idle_s: float = 0.02,
) -> None:
    """Poll ``GET /recommendations/{id}`` for customers with events not yet visible (a few requests at
    a time), reporting each answer's ``event_id`` with ``clock()``; used by the demo and bench/latency."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        sem = asyncio.Semaphore(4)

        async def check(customer: int) -> None:
            async with sem:
                resp = await client.get(f"/recommendations/{customer}")
            if resp.status_code == 200:
                tracker.seen(customer, resp.json().get("event_id"), clock())

        while not stop.is_set():
            customers = list(tracker.pending)
            if customers:
                await asyncio.gather(*(check(c) for c in customers))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle_s)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
