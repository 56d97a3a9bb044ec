"""Stored answers kept in memory, dropped when the database says they changed.

``GET /recommendations/{id}`` reads a customer's stored answers (the streamed one and the active
version's precomputed one) from PostgreSQL. :class:`AnswerCache` keeps what it read, per customer,
so that a repeated request costs no database round trip, and drops a customer's entry when
``infra.answer_changes`` reports that a statement changed their rows (``sql/0230_answer_notify.sql``:
delivered when the writing transaction commits).

The rules that make it never serve what the table no longer holds (beyond the notification's
delivery, a few milliseconds):

- It is used only while the listener is live (``set_live(True)``: ``LISTEN`` is in place). Going
  live or losing the listener drops everything; while it is not live every lookup goes to the
  database (``bypass``).
- A read races the notifications: a read that started before a change may return the old rows after
  the change's notification was handled. Each notification gets a sequence number; a read keeps
  what it got only when no notification touching its customer (or every customer) arrived since it
  started. The per-customer record of recent notifications is bounded (``touched_max``); when it
  forgets one, reads that started before it are not kept at all.
- A version switch needs nothing: an entry names the version it was read for, and a lookup for
  another version is a miss. Entries also expire after ``ttl_s`` (a bound if the listener's link
  dies silently between two keep-alives).

Memory is bounded by ``max_bytes`` (an estimate of each entry's size), least recently used out. A
``limit`` deeper than ``depth`` (the precomputed answers' depth) is read from the database each time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from infra.latest import StoredAnswers
from service.metrics import ANSWER_CACHE_BYTES, ANSWER_CACHE_LIVE, answer_cache_lookups
from service.ports import AnswerLookup

__all__ = ["AnswerCache"]

_HIT = answer_cache_lookups("hit")
_MISS = answer_cache_lookups("miss")
_BYPASS = answer_cache_lookups("bypass")


@dataclass(slots=True)
class _Entry:
    version: str | None
    found: StoredAnswers
    size: int
    expires: float


def _size(found: StoredAnswers) -> int:
    """Bytes an entry holds, roughly (the strings, the items, the objects around them)."""
    size = 400
    if found.stream is not None:
        size += len(found.stream.recommended) + len(found.stream.similar) + 200
    if found.model is not None:
        size += 120 * len(found.model)
    return size


def _cut(found: StoredAnswers, limit: int) -> StoredAnswers:
    if found.model is None or len(found.model) <= limit:
        return found
    return StoredAnswers(found.stream, found.model[:limit])


class AnswerCache:
    """An ``AnswerLookup`` that keeps ``inner``'s answers in memory (see the module docstring)."""

    def __init__(
        self,
        inner: AnswerLookup,
        *,
        max_bytes: int,
        ttl_s: float,
        depth: int,
        touched_max: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._depth = depth
        self._touched_max = touched_max
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._bytes = 0
        self._live = False
        self._seq = 0  # one per notification (and per going live or not)
        self._touched: OrderedDict[int, int] = OrderedDict()  # customer -> seq of its last change
        self._floor = 0  # reads that started before this seq are not kept (forgotten touches)
        self._flushed = 0  # seq of the last drop of everything
        ANSWER_CACHE_LIVE.set(0)
        ANSWER_CACHE_BYTES.set(0)

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    # ------------------------------------------------------------------------------ the signals
    def set_live(self, live: bool) -> None:
        """The listener is (not) in place: either way what is kept may have missed a change."""
        self._live = live
        ANSWER_CACHE_LIVE.set(1 if live else 0)
        self._drop_all()

    def changed(self, customers: frozenset[int] | None) -> None:
        """A notification: these customers' stored answers changed (``None``: anyone's)."""
        if customers is None:
            self._drop_all()
            return
        self._seq += 1
        seq = self._seq
        for customer in customers:
            entry = self._entries.pop(customer, None)
            if entry is not None:
                self._bytes -= entry.size
            self._touched[customer] = seq
            self._touched.move_to_end(customer)
        while len(self._touched) > self._touched_max:
            _, forgotten = self._touched.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        ANSWER_CACHE_BYTES.set(self._bytes)

    def _drop_all(self) -> None:
        self._seq += 1
        self._flushed = self._seq
        self._entries.clear()
        self._touched.clear()
        self._bytes = 0
        ANSWER_CACHE_BYTES.set(0)

    # ------------------------------------------------------------------------------ the read
    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        if not self._live or limit > self._depth:
            _BYPASS.inc()
            return await self._inner.lookup(customer_number, model_version, limit)
        now = self._clock()
        entry = self._entries.get(customer_number)
        if entry is not None and entry.version == model_version and entry.expires > now:
            self._entries.move_to_end(customer_number)
            _HIT.inc()
            return _cut(entry.found, limit)
        _MISS.inc()
        started = self._seq
        found = await self._inner.lookup(customer_number, model_version, self._depth)
        if self._keepable(customer_number, started):
            self._keep(customer_number, _Entry(model_version, found, _size(found), now + self._ttl_s))
        return _cut(found, limit)

    def _keepable(self, customer_number: int, started: int) -> bool:
        return (
            self._live
            and started >= self._flushed
            and started >= self._floor
            and self._touched.get(customer_number, 0) <= started
        )

    def _keep(self, customer_number: int, entry: _Entry) -> None:
        if entry.size > self._max_bytes:
            return
        old = self._entries.pop(customer_number, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[customer_number] = entry
        self._bytes += entry.size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
        ANSWER_CACHE_BYTES.set(self._bytes)
