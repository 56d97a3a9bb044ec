"""The ``latest_recommendations`` table: written by the consumer, read by the API.

:class:`PgStoredAnswers` is the API's read: the streamed answer, items as stored JSON text (nothing
decoded and encoded again), together with the model version's precomputed answer for the customer
(``customer_answers``, written by ``recsys load-vectors``), in one round trip.

A row is replaced only by a strictly newer event (``event_time``, then ``event_id``), so a replay
after a crash, or two workers briefly processing the same shard, never moves a customer backwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from core.errors import DatabaseUnavailable, DataRejected
from core.recommendations import LatestRow, Recommendation, ScoredItem, SimilarItems, Source

__all__ = ["LatestRow", "PgLatestStore", "PgStoredAnswers", "StoredAnswers", "StreamedAnswer"]

_UPSERT = """
INSERT INTO latest_recommendations AS cur
    (customer_number, recommended_items, similar_items, model_version, event_id, event_time, computed_at)
SELECT * FROM unnest($1::int[], $2::jsonb[], $3::jsonb[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::timestamptz[])
ORDER BY 1
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
        # rows are locked in customer order, so two shards' batches that share customers queue behind
        # each other instead of deadlocking (seen with several consumers on one stream)
        batch = [newest[customer] for customer in sorted(newest)]
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


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    """A customer's stored streamed answer, its items still JSON text as stored (``recommended``: an
    array of ``{id, score}``; ``similar``: ``{product_code, similar_items}``) with their lengths."""

    model_version: str
    event_id: str
    computed_at: datetime
    recommended: str
    similar: str
    recommended_count: int
    similar_count: int


@dataclass(frozen=True, slots=True)
class StoredAnswers:
    """What is stored for a customer: the streamed answer (of whichever version computed it) and
    the given model version's precomputed answer (``None``: the version has none for them)."""

    stream: StreamedAnswer | None
    model: tuple[ScoredItem, ...] | None


_LOOKUP = """
SELECT l.model_version, l.event_id, l.computed_at,
       l.recommended_items::text AS recommended, l.similar_items::text AS similar,
       jsonb_array_length(l.recommended_items) AS recommended_count,
       jsonb_array_length(COALESCE(l.similar_items->'similar_items', '[]'::jsonb)) AS similar_count,
       a.item_ids[1:$3] AS item_ids, a.scores[1:$3] AS scores
FROM (SELECT $1::int AS customer_number) q
LEFT JOIN latest_recommendations l ON l.customer_number = q.customer_number
LEFT JOIN customer_answers a ON a.customer_number = q.customer_number AND a.version = $2
"""


class PgStoredAnswers:
    """The API's read of ``latest_recommendations`` and ``customer_answers``: one round trip."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        """The customer's streamed answer, and ``model_version``'s precomputed one cut to ``limit``."""
        try:
            rec = await self._pool.fetchrow(_LOOKUP, customer_number, model_version, limit)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"reading stored recommendations failed: {exc}") from exc
        assert rec is not None  # the outer side always has its one row
        stream = None
        if rec["model_version"] is not None:
            stream = StreamedAnswer(
                rec["model_version"],
                rec["event_id"],
                rec["computed_at"],
                rec["recommended"],
                rec["similar"],
                rec["recommended_count"],
                rec["similar_count"],
            )
        model = None
        if rec["item_ids"] is not None:
            model = tuple(
                ScoredItem(i, float(s)) for i, s in zip(rec["item_ids"], rec["scores"], strict=True)
            )
        return StoredAnswers(stream, model)
