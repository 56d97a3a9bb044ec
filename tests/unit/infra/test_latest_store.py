"""PgLatestStore.upsert_many's batch: one row per customer (the newest), in customer order -- the
order PostgreSQL locks the rows in, so two consumers' batches sharing customers queue, never deadlock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from core.recommendations import LatestRow, Recommendation, ScoredItem, SimilarItems
from infra.latest import _UPSERT, PgLatestStore


class _RecordingPool:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.calls.append((sql, args))
        return "INSERT 0 0"


def _row(customer: int, second: int, event_id: str) -> LatestRow:
    at = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=second)
    rec = Recommendation((ScoredItem("S10_1678", 0.5),), SimilarItems(None, ()), "v1")
    return LatestRow(customer, rec, event_id, at, at)


def test_a_batch_is_written_newest_per_customer_in_customer_order() -> None:
    rng = random.Random(7)
    rows = [_row(rng.choice([497, 103, 112, 250, 9]), rng.randrange(60), f"e{i:03d}") for i in range(40)]
    pool = _RecordingPool()
    asyncio.run(PgLatestStore(pool).upsert_many(rows))  # type: ignore[arg-type]
    [(sql, args)] = pool.calls
    customers, event_ids = args[0], args[4]
    assert customers == sorted(set(customers)) == sorted({r.customer_number for r in rows})
    for customer, event_id in zip(customers, event_ids, strict=True):
        theirs = [r for r in rows if r.customer_number == customer]
        newest = max(theirs, key=lambda r: (r.event_time, r.event_id))
        assert event_id == newest.event_id
    assert sql == _UPSERT and "ORDER BY 1" in sql  # the rows reach the insert in that order
