"""``load_vectors``: a verified artifact version -> PostgreSQL + pgvector, switched on atomically.

Per version: ``item_emb__<tag>`` and ``user_emb__<tag>`` tables (binary COPY through the pgvector
codec; a hybrid version's user rows also hold the customer's training items, ``bought``, which the
recommender leaves out of their answers; the lab's ``user_emb`` view shows ``id, embedding`` only),
an HNSW index on the items, the exact item-to-item neighbours (top ``NEIGHBOURS``), the popular
items, every known customer's own answer (``model_store.customer_answers``), and a
``model_versions`` row holding the weights (the torch state_dict, and the user tower's arrays,
``user_tower``, which the serving processes read without torch) and feature parameters. Everything
is written in ONE transaction that ends by making the version the active one and re-pointing the
lab's ``item_emb`` / ``user_emb`` views: a reader sees the old version or the new one, never a mix,
and a crashed load leaves nothing behind. Loads are serialised by an advisory lock.

Index choice: the embeddings are L2-normalised, so inner product, cosine similarity and Euclidean
distance rank identically; ``vector_ip_ops`` (``<#>``, the negative inner product) is the cheapest of
the three (no norms per comparison) and its score is directly the model's predicted (scaled) rating.

Search width: right after the index is built, the loader measures recall@10 of the HNSW scan against
the exact top-10 (numpy) on a sample of the version's own user vectors (the queries it will serve),
at widening ``hnsw.ef_search`` steps, and records the smallest width reaching the recall target
(default ``RECALL_TARGET``) in the version's row (``ef_search``, ``ef_search_recall``): the
recommender serves with it unless an ``ef_search`` is given explicitly. A fixed width does not
fit every catalog: the recall it gives falls with the catalog size and with how clustered the
embeddings are. The build itself runs with ``maintenance_work_mem`` sized from the catalog
(``build_memory_kb``, ``SET LOCAL``), so the graph is built in memory, not on disk.

Retention: the newest ``keep`` versions stay loaded (the active one and its predecessors, so a
process that has not refreshed yet keeps working and a rollback is a switch, not a reload); older
ones are dropped after the switch.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from core.errors import ConfigError, DatabaseUnavailable, NotFoundError
from infra.logs import get_logger
from infra.objectstore import open_store
from infra.pg import connect
from model_store.artifacts import ArtifactBundle, load_bundle
from model_store.customer_answers import ensure_customer_answers, store_customer_answers

__all__ = [
    "BUILD_MEMORY_MAX_KB",
    "BUILD_MEMORY_MIN_KB",
    "EF_SEARCH_STEPS",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_M",
    "NEIGHBOURS",
    "RECALL_SAMPLE",
    "RECALL_TARGET",
    "LoadSummary",
    "SearchWidth",
    "activate_version",
    "build_memory_kb",
    "exact_neighbours",
    "load_bundle_into",
    "load_vectors",
    "table_names",
    "tune_ef_search",
]

log = get_logger(__name__)

NEIGHBOURS = 100  # similar items stored per item (the API's largest limit)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 256  # measured: recall@10 0.89 -> 0.96 at 10k items (ef_search 100), see docs
_LOAD_LOCK = 0x7265637379730100  # "recsys" + 0x100
RECALL_TARGET = 0.98  # recall@10 the default search width must reach on the loader's sample
EF_SEARCH_STEPS = (40, 60, 80, 100, 140, 200, 280, 400, 560, 800, 1000)  # the widths tried, in order
RECALL_SAMPLE = 300  # query vectors of the measurement
BUILD_MEMORY_MIN_KB = 64 * 1024  # PostgreSQL's own default maintenance_work_mem
BUILD_MEMORY_MAX_KB = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoadSummary:
    version: str
    items: int
    users: int
    neighbours: int = 0
    already_loaded: bool = False
    dropped: tuple[str, ...] = ()
    seconds: float = 0.0
    ef_search: int | None = None
    ef_search_recall: float | None = None


@dataclass(frozen=True, slots=True)
class SearchWidth:
    """The chosen ``hnsw.ef_search`` and the recall@10 it gave on the sample (``queries`` vectors)."""

    ef_search: int
    recall: float
    queries: int


def build_memory_kb(items: int, dim: int) -> int:
    """``maintenance_work_mem`` (kB) under which pgvector builds an HNSW graph of ``items`` vectors in
    memory: per element the vector (4 bytes a dimension + header), its level-0 neighbour array
    (``2 * HNSW_M`` candidates of 16 bytes), and 512 bytes for the element's header, the upper
    levels' share and allocation overhead (pgvector's structures come to about 0.9 kB an element at
    32 dimensions; this counts 1.16 kB), plus 25%; at least PostgreSQL's default, at most 4 GB."""
    per_item = 4 * dim + 8 + 2 * HNSW_M * 16 + 512
    need = int(items * per_item * 1.25) // 1024
    return max(BUILD_MEMORY_MIN_KB, min(BUILD_MEMORY_MAX_KB, need))


def _exact_top(
    items: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """Exact top-``k`` item rows by inner product per query row (ties: lower row first)."""
    top = np.zeros((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], 64):
        sim = queries[start : start + 64] @ items.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(sim, part, axis=1)), axis=1)
        top[start : start + 64] = np.take_along_axis(part, order, axis=1)
    return top


async def tune_ef_search(
    conn: asyncpg.Connection[Any],
    item_table: str,
    item_ids: list[str],
    item_vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    *,
    target: float = RECALL_TARGET,
    k: int = 10,
) -> SearchWidth:
    """The smallest of ``EF_SEARCH_STEPS`` whose recall@``k`` over ``queries`` (HNSW scan on
    ``item_table`` against the exact top-``k``) reaches ``target``; the largest step when none does.
    A returned item scoring as high as the exact ``k``-th counts as a hit (an item tied with it is as
    good an answer). Runs on ``conn`` (inside the load's transaction: the table need not be
    committed)."""
    k = min(k, len(item_ids))
    if k == 0 or queries.shape[0] == 0:
        return SearchWidth(EF_SEARCH_STEPS[-1], 1.0, 0)
    exact = await asyncio.to_thread(_exact_top, item_vectors, queries, k)
    kth = np.einsum("ij,ij->i", item_vectors[exact[:, -1]], queries) - 1e-5  # float32 rounding
    position = {code: i for i, code in enumerate(item_ids)}
    sql = f"""
        WITH cfg AS MATERIALIZED (
            SELECT set_config('hnsw.ef_search', $1::text, true) AS ef,
                   set_config('hnsw.iterative_scan', 'strict_order', true) AS scan
        )
        SELECT q.ord, t.ids
        FROM cfg, unnest($2::vector[]) WITH ORDINALITY AS q(vec, ord)
        CROSS JOIN LATERAL (
            SELECT array_agg(s.id) AS ids FROM (
                SELECT e.id FROM {item_table} e
                WHERE cfg.ef IS NOT NULL AND cfg.scan IS NOT NULL
                ORDER BY e.embedding <#> q.vec LIMIT {k}
            ) s
        ) t"""
    from pgvector import Vector

    vectors = [Vector(v) for v in queries]
    recall = 0.0
    for ef in EF_SEARCH_STEPS:
        hits = 0
        for row in await conn.fetch(sql, str(ef), vectors):
            q = int(row["ord"]) - 1
            found = [position[i] for i in row["ids"] or ()]
            hits += min(k, int(np.count_nonzero(item_vectors[found] @ queries[q] >= kth[q]))) if found else 0
        recall = hits / (k * queries.shape[0])
        if recall >= target:
            return SearchWidth(ef, recall, queries.shape[0])
    log.warning(
        "recall@%d %.3f at the widest ef_search %d is below the target %.3f",
        k,
        recall,
        EF_SEARCH_STEPS[-1],
        target,
    )
    return SearchWidth(EF_SEARCH_STEPS[-1], recall, queries.shape[0])


def _sample_queries(bundle: ArtifactBundle, n: int = RECALL_SAMPLE) -> npt.NDArray[np.float32]:
    """Up to ``n`` of the version's user vectors (the queries it serves; its item vectors when it has
    no users), picked by a seeded generator: the same version gives the same sample."""
    pool = bundle.user_vectors if len(bundle.user_ids) else bundle.item_vectors
    vectors = np.asarray(pool, dtype=np.float32)
    if vectors.shape[0] <= n:
        return vectors
    rows = np.sort(np.random.default_rng(20_251_201).choice(vectors.shape[0], n, replace=False))
    return vectors[rows]


def table_names(version: str) -> tuple[str, str]:
    """(item table, user table) of a version: safe identifiers derived from the version id."""
    tag = re.sub(r"[^a-z0-9]", "_", version.lower())
    if not tag or len(tag) > 48:
        raise NotFoundError(f"version id {version!r} cannot name a table")
    return f"item_emb__{tag}", f"user_emb__{tag}"


def exact_neighbours(
    vectors: npt.NDArray[np.float32], k: int, chunk: int = 1024
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-``k`` by inner product for every row, itself excluded: (indices, scores), best first."""
    n = vectors.shape[0]
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    scores = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, scores
    for start in range(0, n, chunk):
        sim = vectors[start : start + chunk] @ vectors.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < n else np.argsort(-sim, axis=1)[:, :k]
        part_scores = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)  # score desc, then index: deterministic
        idx[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return idx, scores


async def _version_state(conn: asyncpg.Connection[Any], version: str) -> tuple[bool, bool]:
    """(has a row, its tables exist)."""
    row = await conn.fetchrow("SELECT item_table, user_table FROM model_versions WHERE version = $1", version)
    if row is None:
        return False, False
    exist = await conn.fetchval(
        "SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[]) AND relkind = 'r'",
        [row["item_table"], row["user_table"]],
    )
    return True, exist == 2


async def activate_version(conn: asyncpg.Connection[Any], version: str) -> None:
    """Make ``version`` the active one and point the lab's views at it (call inside a transaction)."""
    row = await conn.fetchrow(
        "SELECT item_table, user_table, dimension FROM model_versions WHERE version = $1", version
    )
    if row is None:
        raise NotFoundError(f"version {version} is not loaded")
    item_table, user_table, dim = row["item_table"], row["user_table"], int(row["dimension"])
    await conn.execute("UPDATE model_versions SET active = false, activated_at = activated_at WHERE active")
    await conn.execute(
        "UPDATE model_versions SET active = true, activated_at = now() WHERE version = $1", version
    )
    await conn.execute(
        f"""
        DROP VIEW IF EXISTS item_emb;
        DROP VIEW IF EXISTS user_emb;
        CREATE VIEW item_emb AS SELECT id, embedding::vector({dim}) AS embedding FROM {item_table};
        CREATE VIEW user_emb AS SELECT id, embedding::vector({dim}) AS embedding FROM {user_table};
        """
    )


async def load_bundle_into(
    conn: asyncpg.Connection[Any],
    bundle: ArtifactBundle,
    keep: int = 3,
    recall_target: float = RECALL_TARGET,
) -> LoadSummary:
    """Load (or re-activate) ``bundle`` on ``conn``; see the module docstring for the guarantees.
    ``recall_target``: the recall@10 the version's recorded ``ef_search`` must reach (0 < t <= 1)."""
    if not 0.0 < recall_target <= 1.0:
        raise ConfigError(f"the recall target must be in (0, 1], got {recall_target}")
    started = time.perf_counter()
    version = bundle.version
    await conn.execute("SELECT pg_advisory_lock($1)", _LOAD_LOCK)
    try:
        has_row, complete = await _version_state(conn, version)
        neighbours = 0
        async with conn.transaction():
            if has_row and complete:
                log.info("version %s is already loaded; switching to it", version)
                await ensure_customer_answers(conn, version)
                # a version loaded before the arrays were stored gets them now
                await conn.execute(
                    "UPDATE model_versions SET user_tower = $2 WHERE version = $1 AND user_tower IS NULL",
                    version,
                    bundle.user_tower_arrays(),
                )
            else:
                neighbours = await _load_tables(conn, bundle, has_row, recall_target)
            await activate_version(conn, version)
            width = await conn.fetchrow(
                "SELECT ef_search, ef_search_recall FROM model_versions WHERE version = $1", version
            )
        dropped = await _drop_old(conn, keep)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOAD_LOCK)
    summary = LoadSummary(
        version,
        len(bundle.item_ids),
        len(bundle.user_ids),
        neighbours,
        already_loaded=has_row and complete,
        dropped=tuple(dropped),
        seconds=time.perf_counter() - started,
        ef_search=None if width is None or width["ef_search"] is None else int(width["ef_search"]),
        ef_search_recall=None
        if width is None or width["ef_search_recall"] is None
        else float(width["ef_search_recall"]),
    )
    log.info(
        "version %s active: %d items, %d users, %d neighbour lists, ef_search %s in %.2f s",
        version,
        summary.items,
        summary.users,
        summary.neighbours,
        summary.ef_search,
        summary.seconds,
    )
    return summary


async def _load_tables(
    conn: asyncpg.Connection[Any], bundle: ArtifactBundle, has_row: bool, recall_target: float
) -> int:
    version = bundle.version
    item_table, user_table = table_names(version)
    dim = bundle.config.embedding_dim
    if has_row:  # a row without its tables (dropped by hand): start over
        await conn.execute("DELETE FROM model_versions WHERE version = $1", version)
    await conn.execute(
        f"""
        DROP TABLE IF EXISTS {item_table};
        DROP TABLE IF EXISTS {user_table};
        CREATE TABLE {item_table} (id varchar PRIMARY KEY, embedding vector({dim}) NOT NULL);
        CREATE TABLE {user_table} (id integer PRIMARY KEY, embedding vector({dim}) NOT NULL, bought text[]);
        """
    )
    await conn.copy_records_to_table(
        item_table,
        records=list(zip(bundle.item_ids, bundle.item_vectors, strict=True)),
        columns=["id", "embedding"],
    )
    bought: list[list[str] | None] = (
        list(bundle.user_bought) if bundle.user_bought is not None else [None] * len(bundle.user_ids)
    )
    await conn.copy_records_to_table(
        user_table,
        records=list(zip(bundle.user_ids, bundle.user_vectors, bought, strict=True)),
        columns=["id", "embedding", "bought"],
    )
    current_kb = int(
        await conn.fetchval("SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'")
    )
    memory_kb = max(current_kb, build_memory_kb(len(bundle.item_ids), dim))
    create_index = (
        f"CREATE INDEX ON {item_table} USING hnsw (embedding vector_ip_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )
    try:
        async with conn.transaction():  # a savepoint: the setting lasts until the load's transaction ends
            await conn.execute(f"SET LOCAL maintenance_work_mem = '{memory_kb}kB'")
            await conn.execute(create_index)
    except asyncpg.InsufficientResourcesError as exc:  # a server that cannot give that much memory
        log.warning(
            "building the index with maintenance_work_mem %d kB failed (%s); building it with the "
            "server's %d kB (slower: the graph is finished on disk)",
            memory_kb,
            exc,
            current_kb,
        )
        await conn.execute(create_index)
    await conn.execute(f"ANALYZE {item_table}; ANALYZE {user_table}")
    width = await tune_ef_search(
        conn,
        item_table,
        list(bundle.item_ids),
        np.asarray(bundle.item_vectors, dtype=np.float32),
        _sample_queries(bundle),
        target=recall_target,
    )
    log.info(
        "version %s: ef_search %d gives recall@10 %.3f on %d sampled queries (target %.3f)",
        version,
        width.ef_search,
        width.recall,
        width.queries,
        recall_target,
    )
    manifest = bundle.stored_manifest or bundle.manifest({})
    await conn.execute(
        """INSERT INTO model_versions (version, item_table, user_table, dimension, items, users, manifest,
                                       model_config, user_features, item_features, weights,
                                       ef_search, ef_search_recall, user_tower)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10::jsonb, $11, $12, $13,
                   $14)""",
        version,
        item_table,
        user_table,
        dim,
        len(bundle.item_ids),
        len(bundle.user_ids),
        json.dumps(manifest),
        json.dumps(bundle.config.to_json()),
        json.dumps(bundle.user_transform.to_json()),
        json.dumps(bundle.item_transform.to_json()),
        bundle.weights,
        width.ef_search,
        width.recall,
        bundle.user_tower_arrays(),
    )
    idx, scores = await asyncio.to_thread(exact_neighbours, bundle.item_vectors, NEIGHBOURS)
    ids = bundle.item_ids
    await conn.copy_records_to_table(
        "item_neighbours",
        records=[(version, ids[i], [ids[j] for j in idx[i]], scores[i].tolist()) for i in range(len(ids))],
        columns=["version", "id", "neighbour_ids", "scores"],
    )
    await conn.copy_records_to_table(
        "popular_items",
        records=[(version, r, p.id, p.score, p.count) for r, p in enumerate(bundle.popular)],
        columns=["version", "rank", "id", "score", "ratings"],
    )
    # scanned at the width just chosen, as the recommender scans the version per request
    await store_customer_answers(conn, version, item_table, user_table, ef_search=width.ef_search)
    return len(ids)


async def _drop_old(conn: asyncpg.Connection[Any], keep: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT version, item_table, user_table FROM model_versions "
        "WHERE NOT active ORDER BY version DESC OFFSET $1",
        max(0, keep - 1),
    )
    dropped = []
    for row in rows:
        async with conn.transaction():
            await conn.execute("DELETE FROM model_versions WHERE version = $1", row["version"])
            await conn.execute(f"DROP TABLE IF EXISTS {row['item_table']}, {row['user_table']}")
        dropped.append(str(row["version"]))
    if dropped:
        log.info("dropped old versions %s", ", ".join(dropped))
    return dropped


async def load_vectors(
    database_url: str,
    artifacts_uri: str,
    version: str | None = None,
    keep: int = 3,
    recall_target: float = RECALL_TARGET,
) -> LoadSummary:
    """Verify ``version`` (default: latest) under ``artifacts_uri`` and make it the active version."""
    bundle = await asyncio.to_thread(load_bundle, open_store(artifacts_uri), version)
    conn = await connect(database_url)
    try:
        return await load_bundle_into(conn, bundle, keep=keep, recall_target=recall_target)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedObjectError, asyncpg.UndefinedColumnError) as exc:
        raise ConfigError(f"the vector tables are missing ({exc}); run `recsys migrate` first") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"loading vectors failed: {exc}") from exc
    finally:
        await asyncio.shield(conn.close())
