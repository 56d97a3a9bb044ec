"""The batch recommender against the one-by-one path, on real PostgreSQL + pgvector.

Scale: 10k items / 100k users (``--quick``: 2k / 10k). A model is trained on synthetic ratings, its
towers embed a synthetic catalog and customer base, ``load_bundle_into`` loads them (binary COPY,
HNSW, exact neighbours), and browsing events (1-5 browsed items, 30% in the cart, k=10) go through

- ``recommend_batch`` in batches of 500 (the consumer's default batch), and
- ``recommend_one`` per event (one forward and one round trip per event),

measured side by side in the same run, both with the candidate cache off (every event embeds and
scans: the path itself). Also printed: where the batch path's time goes (features, model, database,
ranking), HNSW recall@10 against an exact top-10 at this scale, the load time, and the model-size
sweep behind the default tower shape (docs/model.md).

The candidate cache, before/after: ``recommend_batch`` with the cache on (the default size) against
off, each run on a fresh recommender (empty caches) over the same events, interleaved, at two key
repetitions: events from all 100k users (a key rarely comes back: the cache's overhead) and from
1k active users (about 10 events per user over the run: the busy-hour case).

Uses ``RECSYS_DATABASE_URL`` when set, otherwise the bench stack; a fresh database is created on
that server for the run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from typing import Any

import asyncpg
import numpy as np

from bench._harness import Figure, Report, bench_stack, drop_database, prepared_model
from core.events import BrowseItem, UserFeatures
from core.recommendations import RecommendRequest
from infra.pg import connect, create_pool, new_database
from model_store.artifacts import ArtifactBundle
from model_store.loader import load_bundle_into
from model_store.recommender import ModelRecommender
from model_store.testing import catalog_bundle, synthetic_ratings
from model_store.training import fit, prepare
from recsys.settings import TrainSettings

BATCH = 500


async def _fresh_database(server_url: str) -> str:
    return await new_database(server_url, "bench_recommender")


def _bundle(n_items: int, n_users: int) -> tuple[ArtifactBundle, Any]:
    trained = fit(synthetic_ratings(seed=1), TrainSettings())
    big = prepare(synthetic_ratings(n_customers=n_users, n_products=n_items, ratings_per_customer=1, seed=2))
    bundle = catalog_bundle(trained, big)
    return bundle, big


def _events(big: Any, n: int, seed: int, users: int | None = None) -> list[RecommendRequest]:
    """``n`` events of users drawn uniformly from the first ``users`` (default: all)."""
    rng = np.random.default_rng(seed)
    cols, items = big.user_columns, big.item_ids
    out = []
    for _ in range(n):
        u = int(rng.integers(users or len(big.user_ids)))
        history = tuple(
            BrowseItem(items[int(j)], 1, bool(rng.random() < 0.3))
            for j in rng.choice(len(items), int(rng.integers(1, 6)), replace=False)
        )
        features = UserFeatures(cols["city"][u], cols["country"][u], cols["creditLimit"][u])
        out.append(RecommendRequest(big.user_ids[u], features, history, k=10))
    return out


async def _recommender_report(quick: bool, server_url: str) -> Report:
    n_items, n_users = (2_000, 10_000) if quick else (10_000, 100_000)
    n_batch_events, n_one_events, runs = (2_000, 200, 3) if quick else (10_000, 500, 5)
    report = Report("recommender", scale={"items": n_items, "users": n_users, "batch": BATCH, "k": 10})
    url = await _fresh_database(server_url)
    bundle, big = await asyncio.to_thread(_bundle, n_items, n_users)

    conn = await connect(url)
    started = time.perf_counter()
    await load_bundle_into(conn, bundle)
    load_s = time.perf_counter() - started
    await conn.close()
    report.add(Figure("load-vectors (COPY + HNSW + neighbours)", "s", [load_s], note="one run"))

    pool = await create_pool(url, min_size=1, max_size=4)
    position = {code: i for i, code in enumerate(bundle.item_ids)}
    for ef in (40, 100, 200):  # recall of the HNSW top-10 against an exact top-10 at this scale
        probe = await ModelRecommender.open(pool, ef_search=ef)
        hits, good = 0, 0
        for q in bundle.user_vectors[:200]:
            scores = bundle.item_vectors @ q
            order = np.argsort(-scores, kind="stable")
            exact = set(order[:10].tolist())
            got = [position[item.id] for item in await probe.items_from_vector(q.tolist(), 10)]
            hits += len(exact & set(got))
            # tie-aware: a returned item as good as the exact 10th (the catalog has near-duplicates)
            good += sum(1 for i in got if scores[i] >= scores[order[9]] - 1e-5)
        await probe.close()
        report.add(Figure(f"HNSW recall@10 (ids), ef_search={ef}", "ratio", [hits / 2000], note="200 users"))
        report.add(
            Figure(f"HNSW recall@10 (scores), ef_search={ef}", "ratio", [good / 2000], note="ties count")
        )
    rec = await ModelRecommender.open(pool, cache_keys=0)
    try:
        events = _events(big, n_batch_events, seed=3)
        await rec.recommend_batch(events[:BATCH])  # warm the connection and the prepared statement
        shares: dict[str, float] = {}

        async def batch_run() -> float:
            start = time.perf_counter()
            for i in range(0, len(events), BATCH):
                await rec.recommend_batch(events[i : i + BATCH], timings=shares)
            return len(events) / (time.perf_counter() - start)

        async def one_run() -> float:
            start = time.perf_counter()
            for event in events[:n_one_events]:
                await rec.recommend_one(event)
            return n_one_events / (time.perf_counter() - start)

        batch_runs, one_runs = [], []
        for _ in range(runs):  # interleaved, so both see the same machine load
            batch_runs.append(await batch_run())
            one_runs.append(await one_run())
        batch = report.add(Figure("recommend_batch (500/batch)", "events/s", batch_runs))
        one = report.add(Figure("recommend_one", "events/s", one_runs))
        report.ratio("batch speed-up vs one-by-one", batch, one)
        total = sum(shares.values())
        for name in ("features", "model", "database", "ranking"):
            report.add(Figure(f"batch time in {name}", "%", [100 * shares.get(name, 0.0) / total]))
        # the cyclic GC walks every long-lived object (torch, numpy, ...) on the ranking's allocations;
        # gc.freeze() after start-up moves them out of its reach: a process-level choice, measured here
        plain_runs, frozen_runs = [], []
        for _ in range(runs):
            plain_runs.append(await batch_run())
            gc.freeze()
            frozen_runs.append(await batch_run())
            gc.unfreeze()
        plain = report.add(Figure("recommend_batch, default GC", "events/s", plain_runs))
        frozen = report.add(Figure("recommend_batch, after gc.freeze()", "events/s", frozen_runs))
        report.ratio("gc.freeze() speed-up", frozen, plain)
        per_event = [1e6 / r for r in batch_runs]
        report.add(Figure("batch cost per event", "us", per_event))
        # the identity the tests assert, checked at this scale too
        same = await rec.recommend_batch(events[:50]) == [await rec.recommend_one(e) for e in events[:50]]
        report.add(Figure("batch == one-by-one (50 events)", "bool", [float(same)]))
        await _cache_figures(report, pool, big, n_batch_events, runs)
    finally:
        await rec.close()
        await pool.close()
        await drop_database(server_url, url)
    return report


async def _cache_figures(report: Report, pool: asyncpg.Pool[Any], big: Any, n_events: int, runs: int) -> None:
    from model_store.recommender import CACHE_KEYS

    async def run(events: list[RecommendRequest], cache_keys: int) -> tuple[float, float]:
        seen = [0, 0]

        def observe(cache: str, hits: int, misses: int) -> None:
            if cache == "candidates":
                seen[0] += hits
                seen[1] += misses

        rec = await ModelRecommender.open(pool, cache_keys=cache_keys, observe=observe)
        try:
            start = time.perf_counter()
            for i in range(0, len(events), BATCH):
                await rec.recommend_batch(events[i : i + BATCH])
            rate = len(events) / (time.perf_counter() - start)
        finally:
            await rec.close()
        return rate, seen[0] / max(1, sum(seen))

    for label, users in (("100k users", None), ("1k active users", 1000)):
        events = _events(big, n_events, seed=4, users=users)
        on_runs, off_runs, hit_rates = [], [], []
        for _ in range(runs):
            off_runs.append((await run(events, 0))[0])
            rate, hit_rate = await run(events, CACHE_KEYS)
            on_runs.append(rate)
            hit_rates.append(hit_rate)
        off = report.add(Figure(f"{label}: recommend_batch, cache off", "events/s", off_runs))
        on = report.add(Figure(f"{label}: recommend_batch, cache on", "events/s", on_runs))
        report.add(Figure(f"{label}: candidate hit rate", "", hit_rates, note=f"{n_events} events"))
        report.ratio(f"{label}: cache on / off", on, off, note="the candidate cache's before/after")


def _sizes_report(quick: bool) -> Report:
    """The tower shapes tried for the default (docs/model.md): quality and training time, on the
    project's own generated shop (``recsys seed`` scale 1 -> ``recsys etl``), three training seeds
    (each seed also draws a different train/validation/test split)."""
    from infra.lake import latest_run, read_run
    from infra.objectstore import open_store

    lake = prepared_model(1.0, train_model=False, load=False).lake
    table = read_run(open_store(lake), latest_run(open_store(lake)))
    report = Report("model_sizes", scale={"ratings": table.num_rows, "data": "recsys seed, scale 1"})
    seeds = (1,) if quick else (1, 2, 3)
    shapes: list[list[int]] = [[], [32], [64], [128], [128, 64]] if not quick else [[], [64]]
    for hidden in shapes:
        rmse, ndcg, secs = [], [], []
        for seed in seeds:
            start = time.perf_counter()
            model = fit(table, TrainSettings(hidden=hidden, seed=seed))
            secs.append(time.perf_counter() - start)
            rmse.append(model.metrics["rmse"] / model.metrics["rmse_mean_baseline"])
            ndcg.append(model.metrics["ndcg_at_10"] / max(model.metrics["popular_ndcg_at_10"], 1e-9))
        name = "x".join(map(str, hidden)) or "linear"
        report.add(Figure(f"hidden={name}: rmse / mean baseline", "x", rmse))
        report.add(Figure(f"hidden={name}: ndcg@10 / popularity", "x", ndcg))
        report.add(Figure(f"hidden={name}: training time", "s", secs, note=f"{statistics.mean(secs):.2f}s"))
    return report


def main(quick: bool = False) -> None:
    sizes = _sizes_report(quick)
    sizes.print()
    sizes.write()
    server = os.environ.get("RECSYS_DATABASE_URL") or bench_stack().database_url
    report = asyncio.run(_recommender_report(quick, server))
    report.print()
    print(f"results: {report.write()}")
