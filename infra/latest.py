"""The ``latest_recommendations`` table: written by the consumer, read by the API.

A row is replaced only by a strictly newer event (``event_time``, then ``event_id``), so a replay
after a crash, or two workers briefly processing the same shard, never moves a customer backwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from core.errors import DatabaseUnavailable, DataRejected
from core.recommendations import LatestRow, Recommendation, ScoredItem, SimilarItems, Source

__all__ = ["LatestRow", "PgLatestStore"]

_UPSERT = """
INSERT INTO latest_recommendations AS cur
    (customer_number, recommended_items, similar_items, model_version, event_id, event_time, computed_at)
SELECT * FROM unnest($1::int[], $2::jsonb[], $3::jsonb[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::timestamptz[])
ON CONFLICT (customer_number) DO UPDATE SET
    recommended_items = EXCLUDED.recommended_items,
    similar_items = EXCLUDED.similar_items,
    model_version = EXCLUDED.model_version,
    event_id = EXCLUDED.event_id,
    event_time = EXCLUDED.event_time,
    computed_at = EXCLUDED.computed_at
WHERE (cur.event_time, cur.event_id) < (EXCLUDED.event_time, EXCLUDED.event_id)
"""


def _items(raw: Any) -> tuple[ScoredItem, ...]:
    data = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return tuple(ScoredItem(str(i["id"]), float(i["score"])) for i in data)


class PgLatestStore:
    """``LatestStore`` on PostgreSQL (see ``core.ports.LatestStore`` for the rules)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def upsert_many(self, rows: Sequence[LatestRow]) -> None:
        if not rows:
            return
        # one row per customer per call: the newest wins (a batch may hold several events of one customer)
        newest: dict[int, LatestRow] = {}
        for row in rows:
            cur = newest.get(row.customer_number)
            if cur is None or (cur.event_time, cur.event_id) < (row.event_time, row.event_id):
                newest[row.customer_number] = row
        batch = list(newest.values())
        try:
            recommended = [
                orjson.dumps([i.to_json() for i in r.recommendation.recommended_items]).decode()
                for r in batch
            ]
            similar = [orjson.dumps(r.recommendation.similar_items.to_json()).decode() for r in batch]
        except TypeError as exc:  # orjson refuses the text (a lone surrogate)
            raise DataRejected(f"latest recommendations cannot be encoded: {exc}") from exc
        try:
            await self._pool.execute(
                _UPSERT,
                [r.customer_number for r in batch],
                recommended,
                similar,
                [r.recommendation.model_version for r in batch],
                [r.event_id for r in batch],
                [r.event_time for r in batch],
                [r.computed_at for r in batch],
            )
        except asyncpg.DataError as exc:  # SQLSTATE class 22: this data, not the database
            raise DataRejected(f"PostgreSQL refused latest recommendations: {exc}") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"storing latest recommendations failed: {exc}") from exc

    async def get(self, customer_number: int) -> LatestRow | None:
        try:
            rec = await self._pool.fetchrow(
                "SELECT recommended_items, similar_items, model_version, event_id, event_time, computed_at "
                "FROM latest_recommendations WHERE customer_number = $1",
                customer_number,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"reading latest recommendations failed: {exc}") from exc
        if rec is None:
            return None
        similar = rec["similar_items"]
        similar = orjson.loads(similar) if isinstance(similar, str | bytes) else similar
        recommendation = Recommendation(
            recommended_items=_items(rec["recommended_items"]),
            similar_items=SimilarItems(similar.get("product_code"), _items(similar.get("similar_items", []))),
            model_version=rec["model_version"],
            source=Source.STREAM,
        )
        return LatestRow(
            customer_number, recommendation, rec["event_id"], rec["event_time"], rec["computed_at"]
        )
