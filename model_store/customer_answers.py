"""Each known customer's model answer, computed once when a version is loaded (``customer_answers``).

A hybrid version holds a vector for every customer it was trained on, and their items (``bought``,
in the version's user table). Their answer from the model is a function of the version alone: the
first ``DEPTH`` items by inner product with their vector, without the items they bought -- what
``ModelRecommender.recommend_customer`` returns per request, scanned the same way (HNSW,
``strict_order`` iterative scan, the version's own ``ef_search``), so a prefix of the stored list is the
per-request answer for any ``limit`` up to ``DEPTH``. ``GET /recommendations/{id}`` reads it instead
of scanning per request; ``recsys forget`` deletes a customer's rows with the rest of their data.
"""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["DEPTH", "EF_SEARCH", "ensure_customer_answers", "store_customer_answers"]

DEPTH = 100  # items kept per customer (the API's default largest limit); deeper asks scan per request
EF_SEARCH = 100  # the width of a version loaded before load-vectors chose one


async def store_customer_answers(
    conn: asyncpg.Connection[Any],
    version: str,
    item_table: str,
    user_table: str,
    *,
    depth: int = DEPTH,
    ef_search: int = EF_SEARCH,
) -> int:
    """Compute and store every customer's answer of ``version`` (inside the caller's transaction:
    the scan settings are transaction-local). Returns how many customers got one."""
    await conn.execute(
        "SELECT set_config('hnsw.ef_search', $1::text, true), "
        "set_config('hnsw.iterative_scan', 'strict_order', true)",
        str(ef_search),
    )
    status = await conn.execute(
        f"""
        INSERT INTO customer_answers (customer_number, version, item_ids, scores)
        SELECT u.id, $1, t.ids, t.scores
        FROM {user_table} u
        CROSS JOIN LATERAL (
            SELECT array_agg(s.id ORDER BY s.dist, s.id) AS ids,
                   array_agg(-s.dist ORDER BY s.dist, s.id) AS scores
            FROM (
                SELECT e.id, e.embedding <#> u.embedding AS dist
                FROM {item_table} e
                WHERE NOT (u.bought IS NOT NULL AND e.id = ANY(u.bought))
                ORDER BY e.embedding <#> u.embedding
                LIMIT $2
            ) s
        ) t
        WHERE t.ids IS NOT NULL
        """,
        version,
        depth,
    )
    return int(status.split()[-1])


async def ensure_customer_answers(conn: asyncpg.Connection[Any], version: str) -> int:
    """Store ``version``'s answers unless it has some (a version loaded before they were kept);
    returns how many were stored by this call."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customer_answers WHERE version = $1)", version):
        return 0
    row = await conn.fetchrow(
        "SELECT item_table, user_table, ef_search FROM model_versions WHERE version = $1", version
    )
    if row is None:
        return 0
    width = EF_SEARCH if row["ef_search"] is None else int(row["ef_search"])
    return await store_customer_answers(
        conn, version, str(row["item_table"]), str(row["user_table"]), ef_search=width
    )
