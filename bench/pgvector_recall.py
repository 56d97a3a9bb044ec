"""pgvector HNSW top-10 against the exact top-10: recall@10 at the default search width, queries/s,
the exact scan's queries/s, and the index build time with and without the loader's
``maintenance_work_mem``.

Items: random L2-normalised 32-d float32 vectors (the model's embedding size), bulk-loaded with binary
COPY (asyncpg + the pgvector codec, as the loader does) into a scratch table of the embedded
PostgreSQL, then indexed exactly as ``model_store.loader`` indexes a version:
``USING hnsw (embedding vector_ip_ops) WITH (m = HNSW_M, ef_construction = HNSW_EF_CONSTRUCTION)``.

Build, twice per size: with the server's ``maintenance_work_mem`` (64 MB, what the loader used before
it sized it: a large graph no longer fits and pgvector finishes the build on disk, with a notice), then
with the loader's ``SET LOCAL maintenance_work_mem`` from ``model_store.loader.build_memory_kb``.

The default search width: ``model_store.loader.tune_ef_search`` on the built index, as
``recsys load-vectors`` runs it (its default recall target, ``RECALL_SAMPLE`` sample queries drawn
apart from the measured ones); the seconds it adds to a load are shown. Then one
``ORDER BY embedding <#> $1 LIMIT 10`` per query from one connection, with the recommender's session
settings (``hnsw.iterative_scan = strict_order``), at the chosen width, at pgvector's default 40 and
at 100 (the fixed width before the loader chose one), 200 and 400. The truth is the numpy exact
top-10 by inner product. The exact scan is the same query with index scans disabled (a sequential scan
+ top-N sort in PostgreSQL). Query figures have several runs over the same queries.

Sizes: 10k and 100k with ``--quick``; 100k, 300k and 1M otherwise; ``BENCH_PGVECTOR_SIZES``
(comma-separated item counts) chooses others. The build with the server's 64 MB is left out at 1M
items and more (it spills to disk and takes hours on two cores): ``BENCH_PGVECTOR_BEFORE=1`` runs it
anyway, ``=0`` leaves it out at every size.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench._harness import Figure, Report, bench_stack, run_async

DIM = 32
K = 10
TABLE = "bench_pgvector_recall"
EF_SEARCH = (40, 100, 200, 400)  # pgvector's default, the fixed width we had, and wider ones


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
    await conn.execute(f"CREATE TABLE {TABLE} (id varchar PRIMARY KEY, embedding vector({DIM}) NOT NULL)")
    started = time.perf_counter()
    chunk = 100_000
    for start in range(0, len(items), chunk):
        await conn.copy_records_to_table(
            TABLE,
            records=[(str(start + i), v) for i, v in enumerate(items[start : start + chunk])],
            columns=["id", "embedding"],
        )
    return time.perf_counter() - started


async def _build(conn: Any, memory_kb: int | None) -> tuple[float, str, bool]:
    """Build the index (``memory_kb`` None: the server's maintenance_work_mem, else SET LOCAL to it as
    the loader does): (seconds, the setting the build saw, whether pgvector said the graph spilled)."""
    from model_store.loader import HNSW_EF_CONSTRUCTION, HNSW_M

    spilled: list[str] = []

    def listen(_conn: Any, message: Any) -> None:
        if "no longer fits" in str(message.message):
            spilled.append(str(message.message))

    conn.add_log_listener(listen)
    try:
        await conn.execute(f"DROP INDEX IF EXISTS {TABLE}_idx")
        async with conn.transaction():
            if memory_kb is not None:
                await conn.execute(f"SET LOCAL maintenance_work_mem = '{memory_kb}kB'")
            setting = str(await conn.fetchval("SHOW maintenance_work_mem"))
            started = time.perf_counter()
            await conn.execute(
                f"CREATE INDEX {TABLE}_idx ON {TABLE} USING hnsw (embedding vector_ip_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
            )
            seconds = time.perf_counter() - started
    finally:
        conn.remove_log_listener(listen)
    return seconds, setting, bool(spilled)


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


def _label(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1_000_000:g}M"


async def _measure(report: Report, url: str, n: int, *, n_queries: int, n_exact: int, runs: int) -> None:
    from infra.pg import connect
    from model_store.loader import RECALL_SAMPLE, RECALL_TARGET, build_memory_kb, tune_ef_search

    label = _label(n)
    items = _vectors(n, seed=n)
    queries = _vectors(n_queries, seed=1)
    sample = _vectors(RECALL_SAMPLE, seed=2)  # the loader's measurement: other queries than ours
    truth = _truth(items, queries)
    conn = await connect(url, timeout_s=30)
    try:
        copy_s = await _load(conn, items)
        report.add(Figure(f"{label}: COPY", "rows/s", [n / copy_s]))
        before: Figure | None = None
        if _before_build(n):
            before_s, before_mem, before_spilled = await _build(conn, None)
            before = report.add(
                Figure(
                    f"{label}: HNSW build, server's maintenance_work_mem",
                    "s",
                    [before_s],
                    note=f"{before_mem}{', spilled to disk' if before_spilled else ', fits'}",
                )
            )
        else:
            print(
                f"  {label}: the build with the server's 64 MB is left out (BENCH_PGVECTOR_BEFORE=1 runs it)"
            )
        current_kb = int(
            await conn.fetchval("SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'")
        )
        after_s, after_mem, after_spilled = await _build(conn, max(current_kb, build_memory_kb(n, DIM)))
        after = report.add(
            Figure(
                f"{label}: HNSW build, loader's maintenance_work_mem",
                "s",
                [after_s],
                note=f"{after_mem}{', spilled to disk' if after_spilled else ', fits'}",
            )
        )
        if before is not None:
            report.ratio(f"{label}: build time, loader's / server's memory", after, before)
        await conn.execute(f"ANALYZE {TABLE}")

        started = time.perf_counter()
        width = await tune_ef_search(conn, TABLE, [str(i) for i in range(n)], items, sample)
        report.add(
            Figure(
                f"{label}: default ef_search (loader)",
                "",
                [float(width.ef_search)],
                note=f"recall {width.recall:.3f} on its {width.queries} queries, target {RECALL_TARGET}, "
                f"{time.perf_counter() - started:.1f} s of the load",
            )
        )
        widths = sorted({*EF_SEARCH, width.ef_search})
        qps_of: dict[int, list[float]] = {ef: [] for ef in widths}
        recall_of: dict[int, list[float]] = {ef: [] for ef in widths}
        for _ in range(runs):  # the widths interleaved: each run measures them side by side
            for ef in widths:
                seconds, found = await _queries(conn, queries, ef, exact=False)
                qps_of[ef].append(n_queries / seconds)
                recall_of[ef].append(_recall(found, truth))
        hnsw: dict[int, Figure] = {}
        for ef in widths:
            default = " (default)" if ef == width.ef_search else ""
            report.add(Figure(f"{label}: recall@10 ef={ef}{default}", "", recall_of[ef]))
            hnsw[ef] = report.add(Figure(f"{label}: HNSW ef={ef}{default}", "q/s", qps_of[ef]))
        qps = []
        exact_recall = []
        for _ in range(runs):
            seconds, found = await _queries(conn, queries[:n_exact], 100, exact=True)
            qps.append(n_exact / seconds)
            exact_recall.append(_recall(found, truth[:n_exact]))
        exact = report.add(
            Figure(f"{label}: exact scan", "q/s", qps, note=f"recall {min(exact_recall):.3f} (sanity: 1.0)")
        )
        chosen = hnsw[width.ef_search]
        report.ratio(f"{label}: HNSW default ef / exact", chosen, exact, note="headline: index speed-up")
        report.ratio(f"{label}: q/s default ef={width.ef_search} / ef=100", chosen, hnsw[100])
        report.ratio(f"{label}: q/s default ef={width.ef_search} / ef=40", chosen, hnsw[40])
        await conn.execute(f"DROP TABLE {TABLE}")
    finally:
        await conn.close()


def _before_build(n: int) -> bool:
    """Whether to build with the server's 64 MB too: by default below 1M items only (at 1M that
    build spills to disk for hours on two cores); ``BENCH_PGVECTOR_BEFORE=1|0`` decides."""
    given = os.environ.get("BENCH_PGVECTOR_BEFORE", "").strip()
    return given == "1" if given else n < 1_000_000


def _sizes(quick: bool) -> tuple[int, ...]:
    given = os.environ.get("BENCH_PGVECTOR_SIZES", "").strip()
    if given:
        return tuple(int(s) for s in given.split(",") if s.strip())
    return (10_000, 100_000) if quick else (100_000, 300_000, 1_000_000)


def main(quick: bool) -> None:
    sizes = _sizes(quick)
    n_queries = 200 if quick else 500
    runs = 3
    from model_store.loader import HNSW_EF_CONSTRUCTION, HNSW_M, RECALL_TARGET

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
            "recall_target": RECALL_TARGET,
            "ef_search": list(EF_SEARCH),
        },
    )
    for n in sizes:
        n_exact = n_queries if n <= 10_000 else max(20, n_queries * 10_000 // n)
        print(f"  {n} items ...", flush=True)
        run_async(_measure(report, info.database_url, n, n_queries=n_queries, n_exact=n_exact, runs=runs))
    report.print()
    print(f"  wrote {report.write()}")
