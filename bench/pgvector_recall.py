"""pgvector HNSW top-10 against the exact top-10: recall@10, queries/s, and the exact scan's queries/s.

Items: random L2-normalised 32-d float32 vectors (the model's embedding size), bulk-loaded with binary
COPY (asyncpg + the pgvector codec, as the loader does) into a scratch table of the embedded
PostgreSQL, then indexed exactly as ``model_store.loader`` indexes a version:
``USING hnsw (embedding vector_ip_ops) WITH (m = HNSW_M, ef_construction = HNSW_EF_CONSTRUCTION)``.
The build runs with ``maintenance_work_mem = 1GB`` so the graph fits in memory (pgvector's advice;
the server default of 64 MB makes the 1M build spill) -- the loader does not set it; its tables are
far smaller.

Queries: random normalised vectors, one ``ORDER BY embedding <#> $1 LIMIT 10`` per query from one
connection, with the recommender's session settings (``hnsw.ef_search`` 100,
``hnsw.iterative_scan = strict_order``); also at pgvector's default ``ef_search`` 40 and at 200 and
400 (``RECSYS_EF_SEARCH``: what a catalog of a million items needs for the recall 100 gives at
100k). The truth is the numpy exact top-10 by inner product. The exact scan is the same query with
index scans disabled (a sequential scan + top-N sort in PostgreSQL). The index is built once per
size (build time has one run); query figures have several runs over the same queries.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench._harness import Figure, Report, bench_stack, run_async

DIM = 32
K = 10
TABLE = "bench_pgvector_recall"
EF_SEARCH = (40, 100, 200, 400)  # pgvector's default, ours, and what a larger catalog may need


def _vectors(n: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _truth(items: np.ndarray[Any, Any], queries: np.ndarray[Any, Any]) -> list[set[int]]:
    out = []
    for q in queries:
        scores = items @ q
        top = np.argpartition(-scores, K)[:K]
        out.append({int(i) for i in top})
    return out


async def _load(conn: Any, items: np.ndarray[Any, Any]) -> float:
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, embedding vector({DIM}) NOT NULL)")
    started = time.perf_counter()
    chunk = 100_000
    for start in range(0, len(items), chunk):
        await conn.copy_records_to_table(
            TABLE,
            records=[(start + i, v) for i, v in enumerate(items[start : start + chunk])],
            columns=["id", "embedding"],
        )
    return time.perf_counter() - started


async def _queries(
    conn: Any, queries: np.ndarray[Any, Any], ef: int, exact: bool
) -> tuple[float, list[set[int]]]:
    await conn.execute(f"SET hnsw.ef_search = {ef}")
    await conn.execute("SET hnsw.iterative_scan = strict_order")
    await conn.execute(f"SET enable_indexscan = {'off' if exact else 'on'}")
    stmt = await conn.prepare(f"SELECT id FROM {TABLE} ORDER BY embedding <#> $1 LIMIT {K}")
    found = []
    started = time.perf_counter()
    for q in queries:
        rows = await stmt.fetch(q)
        found.append({int(r["id"]) for r in rows})
    return time.perf_counter() - started, found


def _recall(found: list[set[int]], truth: list[set[int]]) -> float:
    return sum(len(f & t) for f, t in zip(found, truth, strict=True)) / (K * len(truth))


async def _measure(report: Report, url: str, n: int, *, n_queries: int, n_exact: int, runs: int) -> None:
    from infra.pg import connect
    from model_store.loader import HNSW_EF_CONSTRUCTION, HNSW_M

    label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    items = _vectors(n, seed=n)
    queries = _vectors(n_queries, seed=1)
    truth = _truth(items, queries)
    conn = await connect(url, timeout_s=30)
    try:
        copy_s = await _load(conn, items)
        report.add(Figure(f"{label}: COPY", "rows/s", [n / copy_s]))
        await conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        await conn.execute(
            f"CREATE INDEX ON {TABLE} USING hnsw (embedding vector_ip_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
        report.add(Figure(f"{label}: HNSW build", "s", [time.perf_counter() - started]))
        await conn.execute(f"ANALYZE {TABLE}")
        hnsw: dict[int, Figure] = {}
        for ef in EF_SEARCH:
            qps, recall = [], []
            for _ in range(runs):
                seconds, found = await _queries(conn, queries, ef, exact=False)
                qps.append(n_queries / seconds)
                recall.append(_recall(found, truth))
            report.add(Figure(f"{label}: recall@10 ef={ef}", "", recall))
            hnsw[ef] = report.add(Figure(f"{label}: HNSW ef={ef}", "q/s", qps))
        qps = []
        exact_recall = []
        for _ in range(runs):
            seconds, found = await _queries(conn, queries[:n_exact], 100, exact=True)
            qps.append(n_exact / seconds)
            exact_recall.append(_recall(found, truth[:n_exact]))
        exact = report.add(
            Figure(f"{label}: exact scan", "q/s", qps, note=f"recall {min(exact_recall):.3f} (sanity: 1.0)")
        )
        report.ratio(f"{label}: HNSW ef=100 / exact", hnsw[100], exact, note="headline: index speed-up")
        await conn.execute(f"DROP TABLE {TABLE}")
    finally:
        await conn.close()


def main(quick: bool) -> None:
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    n_queries = 200 if quick else 500
    runs = 3
    from model_store.loader import HNSW_EF_CONSTRUCTION, HNSW_M

    info = bench_stack()
    report = Report(
        "pgvector_recall",
        scale={
            "items": list(sizes),
            "dim": DIM,
            "queries": n_queries,
            "runs": runs,
            "k": K,
            "hnsw_m": HNSW_M,
            "hnsw_ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": list(EF_SEARCH),
        },
    )
    for n in sizes:
        n_exact = n_queries if n <= 10_000 else max(20, n_queries * 10_000 // n)
        print(f"  {n} items ...", flush=True)
        run_async(_measure(report, info.database_url, n, n_queries=n_queries, n_exact=n_exact, runs=runs))
    report.print()
    print(f"  wrote {report.write()}")
