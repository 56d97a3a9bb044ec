"""The suppression list: customers whose events the product must not process (``recsys forget --suppress``).

``SuppressionList.load(pool)`` reads ``suppressed_customers`` once; ``contains(n)`` is a set lookup
and ``partition(items, customer_of)`` splits a batch (no I/O, safe on the hot path);
``await maybe_refresh()`` re-reads the list at most every ``refresh_s`` seconds, and only when it
changed: the check is one aggregate query (``count``, ``max(suppressed_at)``), the full read happens
only when that answer moves. A refresh that
fails (database down) keeps the last list and is retried at the next due time: a consumer keeps
running through a database outage with the list it has.

A customer suppressed now is honoured by a running process within ``refresh_s`` (plus one batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import asyncpg

from core.errors import DatabaseUnavailable
from infra.logs import get_logger
from infra.pg import map_pg_error

__all__ = ["DEFAULT_REFRESH_S", "SuppressionList", "read_suppressed"]

log = get_logger(__name__)
T = TypeVar("T")
DEFAULT_REFRESH_S = 30.0
_CHANGE_CHECK = "SELECT count(*), max(suppressed_at) FROM suppressed_customers"
_ALL = "SELECT customer_number FROM suppressed_customers"


async def read_suppressed(database_url: str) -> frozenset[int]:
    """The suppressed customer numbers, read once (batch jobs). A database without the table (not
    migrated yet) has suppressed nobody; one that cannot be read raises ``DatabaseUnavailable``."""
    from infra.pg import connect

    conn = await connect(database_url)
    try:
        rows = await conn.fetch(_ALL)
    except asyncpg.UndefinedTableError:
        return frozenset()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise map_pg_error(exc) from exc
    finally:
        await conn.close()
    return frozenset(int(r["customer_number"]) for r in rows)


class SuppressionList:
    """A cached set of suppressed customer numbers, refreshed cheaply and periodically."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.refresh_s = refresh_s
        self._clock = clock
        self._customers: frozenset[int] = frozenset()
        self._token: tuple[int, Any] | None = None
        self._next_at = 0.0
        self.reloads = 0  # full reads of the table (for tests and metrics)

    @classmethod
    async def load(
        cls,
        pool: asyncpg.Pool[Any],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> SuppressionList:
        """Read the list now. Raises ``DatabaseUnavailable`` when the table cannot be read (a
        process must not start without knowing whom to suppress; run ``recsys migrate``)."""
        suppression = cls(pool, refresh_s=refresh_s, clock=clock)
        await suppression.refresh()
        return suppression

    def __len__(self) -> int:
        return len(self._customers)

    def contains(self, customer_number: int) -> bool:
        """True when the customer's events must be dropped. No I/O."""
        return customer_number in self._customers

    async def refresh(self) -> bool:
        """Re-read the list if it changed; return True when it was re-read. Raises ``DatabaseUnavailable``."""
        try:
            async with self._pool.acquire(timeout=10.0) as conn:
                row = await conn.fetchrow(_CHANGE_CHECK, timeout=10.0)
                token = (int(row[0]), row[1]) if row is not None else (0, None)
                if token == self._token:
                    return False
                rows = await conn.fetch(_ALL, timeout=10.0)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise map_pg_error(exc) from exc
        finally:
            self._next_at = self._clock() + self.refresh_s
        self._customers = frozenset(int(r[0]) for r in rows)
        self._token = token
        self.reloads += 1
        log.info("suppression list loaded", extra={"fields": {"customers": len(self._customers)}})
        return True

    def partition(
        self, items: Iterable[T], customer_of: Callable[[T], int | None]
    ) -> tuple[list[T], list[T]]:
        """(items to process, items of suppressed customers), order kept. No I/O."""
        kept: list[T] = []
        dropped: list[T] = []
        for item in items:
            customer = customer_of(item)
            (dropped if customer is not None and customer in self._customers else kept).append(item)
        return kept, dropped

    async def maybe_refresh(self) -> bool:
        """``refresh()`` when it is due (every ``refresh_s``); keeps the old list if the database fails.
        Cheap to call per batch from every shard worker: one clock read until it is due, and one
        caller at a time does the query."""
        if self._clock() < self._next_at:
            return False
        self._next_at = self._clock() + self.refresh_s
        try:
            return await self.refresh()
        except DatabaseUnavailable as exc:
            log.warning("suppression list not refreshed (kept the last one): %s", exc)
            return False
