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

The recommendation stage, before/after (issues 12, 16 and 18): the same events through
``recommend_batch`` on four recommenders, each cache off, interleaved: a features version through
the NumPy copy of the user tower of before issue 12 (kept here, in :class:`NumpyUserTower`, only as
the reference), the same version through the trained torch tower (issue 12's serving path, kept
here by :func:`torch_recommender`), the same version as serving runs it now (issue 16: the NumPy serving
tower from the stored arrays, no torch), and the hybrid version (every event's customer known:
their own vector from the user table, their 20 bought items filtered in the scan). The main
figures above run on the hybrid version.

The candidate cache, before/after: ``recommend_batch`` with the cache on (the default size) against
off, each run on a fresh recommender (empty caches) over the same events, interleaved, at two key
repetitions: events from all 100k users (a key rarely comes back: the cache's overhead) and from
1k active users (about 10 events per user over the run: the busy-hour case).

Uses ``RECSYS_DATABASE_URL`` when set, otherwise the bench stack; a fresh database is created on
that server for the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np

from bench._harness import Figure, Report, bench_stack, drop_database, prepared_model
from core.events import BrowseItem, UserFeatures
from core.recommendations import RecommendRequest
from infra.pg import connect, create_pool, new_database
from model_store.artifacts import ArtifactBundle, new_version
from model_store.features import SparseRows
from model_store.loader import load_bundle_into
from model_store.model import ServingTower, load_state_dict, save_state_dict
from model_store.recommender import FeatureKey, ModelRecommender, ModelState
from model_store.testing import catalog_bundle, synthetic_ratings
from model_store.training import fit, prepare
from recsys.settings import TrainSettings

BATCH = 500


class NumpyUserTower:
    """The serving forward before issue 12, verbatim: the user tower's Linear layers as float64 numpy
    arrays, the first layer a gather over the one-hot positions. The benchmark's reference only."""

    def __init__(self, weights: bytes) -> None:
        state = load_state_dict(weights)
        names = sorted(
            (k for k in state if k.startswith("user_tower.layers.") and k.endswith(".weight")),
            key=lambda name: tuple(int(part) for part in name.split(".") if part.isdigit()),
        )
        self.weights = [state[n].to(dtype=state[n].dtype).double().numpy() for n in names]
        self.biases = [state[n[: -len("weight")] + "bias"].double().numpy() for n in names]
        for prev, nxt in itertools.pairwise(self.weights):
            assert nxt.shape[1] == prev.shape[0]

    def embed(self, rows: SparseRows, numeric_offset: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        n = rows.indices.shape[0]
        first_t = self.weights[0].T
        h = np.tile(self.biases[0], (n, 1))
        for j in range(rows.indices.shape[1]):
            col = rows.indices[:, j]
            hit = col >= 0
            h[hit] += first_t[col[hit]]
        for j in range(rows.numeric.shape[1]):
            h += rows.numeric[:, j : j + 1] * first_t[numeric_offset + j]
        for w, b in zip(self.weights[1:], self.biases[1:], strict=True):
            np.maximum(h, 0.0, out=h)
            h = h @ w.T + b
        norm = np.sqrt((h * h).sum(axis=1, keepdims=True))
        out: np.ndarray[Any, np.dtype[np.float32]] = (h / np.maximum(norm, 1e-12)).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class NumpyState(ModelState):
    """A version's state whose user tower is :class:`NumpyUserTower` (the path before issue 12)."""

    numpy_tower: NumpyUserTower | None = None

    def embed_known(
        self, keys: Sequence[FeatureKey]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], list[bool], float, float]:
        assert self.numpy_tower is not None
        started = time.perf_counter()
        rows = self.user_transform.sparse_rows(self._rows(keys))
        any_category: list[bool] = np.any(rows.indices >= 0, axis=1).tolist()
        known = [hit or key[2] is not None for hit, key in zip(any_category, keys, strict=True)]
        encoded = time.perf_counter()
        vectors = self.numpy_tower.embed(rows, self.user_transform.numeric_offset)
        return vectors, known, encoded - started, time.perf_counter() - encoded


async def torch_recommender(pool: asyncpg.Pool[Any], weights: bytes, **kwargs: Any) -> ModelRecommender:
    """A recommender of the active version that runs the torch tower (one intra-op thread, as the
    recommender set it then) instead of the NumPy serving tower."""
    import torch

    torch.set_num_threads(1)
    rec = await ModelRecommender.open(pool, **kwargs)
    tower = ServingTower.from_state_dict(load_state_dict(weights), "user_tower")
    # the reference path of a before/after figure: the same version, the torch tower
    rec._state = dataclasses.replace(rec._state, user_tower=tower)
    return rec


async def numpy_recommender(pool: asyncpg.Pool[Any], weights: bytes, **kwargs: Any) -> ModelRecommender:
    """A recommender of the active version that runs :class:`NumpyUserTower` instead of the torch
    tower: the benchmark's "before" path (it swaps the version's state, which only a benchmark may)."""
    rec = await ModelRecommender.open(pool, **kwargs)
    state = rec._state  # the reference path of a before/after figure
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(ModelState)}
    rec._state = NumpyState(**fields, numpy_tower=NumpyUserTower(weights))
    return rec


async def _fresh_database(server_url: str) -> str:
    return await new_database(server_url, "bench_recommender")


BOUGHT = 20  # items each customer of the hybrid version has bought (the filter's lists)


def _bundle(n_items: int, n_users: int) -> tuple[ArtifactBundle, ArtifactBundle, Any]:
    """The hybrid version (every customer known, ``BOUGHT`` items each) and a features version of the
    same towers (today's kind before issue 18: no customer lookup, no filter), and the catalog."""
    trained = fit(synthetic_ratings(seed=1), TrainSettings())
    big = prepare(synthetic_ratings(n_customers=n_users, n_products=n_items, ratings_per_customer=1, seed=2))
    rng = np.random.default_rng(5)
    rated = len(big.item_ids)  # the products somebody rated
    bought = [[big.item_ids[int(j)] for j in rng.choice(rated, BOUGHT, replace=False)] for _ in big.user_ids]
    hybrid = catalog_bundle(trained, big, bought=bought)
    # the features version: the towers' feature layers only (what NumpyUserTower computes, exactly)
    plain = {k: v for k, v in trained.export_state_dict().items() if ".layers." in k}
    weights = save_state_dict(plain)
    user_tower = ServingTower.from_state_dict(plain, "user_tower")
    features = dataclasses.replace(
        hybrid,
        version=new_version(weights),
        config=dataclasses.replace(hybrid.config, kind="features"),
        weights=weights,
        user_vectors=user_tower.embed(trained.user_transform.dense(big.user_columns)),
        user_bought=None,
    )
    return hybrid, features, big


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
    bundle, features_bundle, big = await asyncio.to_thread(_bundle, n_items, n_users)

    pool = await create_pool(url, min_size=1, max_size=4)
    conn = await connect(url)
    await load_bundle_into(conn, features_bundle)  # the reference paths open on this version
    today = await numpy_recommender(pool, features_bundle.weights, cache_keys=0)
    torch_features = await torch_recommender(pool, features_bundle.weights, cache_keys=0)
    served = await ModelRecommender.open(pool, cache_keys=0)
    started = time.perf_counter()
    await load_bundle_into(conn, bundle)  # the hybrid version: active from here on
    load_s = time.perf_counter() - started
    await conn.close()
    report.add(Figure("load-vectors (COPY + HNSW + neighbours)", "s", [load_s], note="one run"))

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
        await _stage_figures(
            report,
            today=today,
            torch_features=torch_features,
            served=served,
            hybrid=rec,
            events=events,
            runs=runs,
        )
        await _cache_figures(report, pool, big, n_batch_events, runs)
    finally:
        await rec.close()
        await today.close()
        await torch_features.close()
        await served.close()
        await pool.close()
        await drop_database(server_url, url)
    return report


async def _stage_figures(
    report: Report,
    *,
    today: ModelRecommender,
    torch_features: ModelRecommender,
    served: ModelRecommender,
    hybrid: ModelRecommender,
    events: list[RecommendRequest],
    runs: int,
) -> None:
    """The recommendation stage per event, cache off, the same events, interleaved (the order
    rotated from run to run, the start-up's objects frozen out of the collector's way as in the
    serving processes):

    - ``today``: a features version through the NumPy copy of the tower (the path before issue 12);
    - ``torch_features``: the same version through the torch tower (issue 12);
    - ``served``: the same version as serving runs it (issue 16: the NumPy serving tower);
    - ``hybrid``: the hybrid version as serving runs it, every event's customer known (their own
      vector from the user table) and their ``BOUGHT`` items filtered in the scan (issue 18)."""
    a = await torch_features.recommend_batch(events[:BATCH])
    b = await today.recommend_batch(events[:BATCH])
    # the same items in the same order (scores may differ in the last float32 digit: the two
    # forwards sum in another order)
    same = [[i.id for i in r.recommended_items] for r in a] == [
        [i.id for i in r.recommended_items] for r in b
    ]
    report.add(Figure("torch tower == NumPy tower, items (500 events)", "bool", [float(same)]))
    c = await served.recommend_batch(events[:BATCH])
    same = [[i.id for i in r.recommended_items] for r in a] == [
        [i.id for i in r.recommended_items] for r in c
    ]
    report.add(Figure("torch tower == serving tower, items (500 events)", "bool", [float(same)]))
    recs = {"numpy": today, "torch": torch_features, "served": served, "hybrid": hybrid}
    per_event: dict[str, list[float]] = {name: [] for name in recs}
    model_us: dict[str, list[float]] = {name: [] for name in recs}
    names = list(recs)
    gc.freeze()  # as the serving processes run once up: the collector's full passes out of the way
    try:
        for run in range(runs):
            # each run starts at the next recommender: a full collection or a warm cache falls on
            # whichever runs at that moment, so a fixed order favours some (seen: the second one)
            for name in names[run % len(names) :] + names[: run % len(names)]:
                rec = recs[name]
                shares: dict[str, float] = {}
                start = time.perf_counter()
                for i in range(0, len(events), BATCH):
                    await rec.recommend_batch(events[i : i + BATCH], timings=shares)
                per_event[name].append(1e6 * (time.perf_counter() - start) / len(events))
                model_us[name].append(1e6 * shares.get("model", 0.0) / len(events))
    finally:
        gc.unfreeze()
    before = report.add(
        Figure("stage per event, features version, NumPy tower (before)", "us", per_event["numpy"])
    )
    after = report.add(Figure("stage per event, features version, torch tower", "us", per_event["torch"]))
    hybrid_fig = report.add(
        Figure("stage per event, hybrid version (known customers, bought filter)", "us", per_event["hybrid"])
    )
    now = report.add(
        Figure("stage per event, features version, serving tower (no torch)", "us", per_event["served"])
    )
    report.ratio("stage per event, torch / NumPy tower", after, before, note="issue 12 goal: <= 1.10")
    report.ratio("stage per event, serving tower / torch tower", now, after, note="issue 16")
    report.ratio("stage per event, hybrid / before", hybrid_fig, before, note="issue 18 goal: <= 1.2")
    m_before = report.add(Figure("model step per event, NumPy tower", "us", model_us["numpy"]))
    m_after = report.add(Figure("model step per event, torch tower", "us", model_us["torch"]))
    report.ratio("model step per event, torch / NumPy", m_after, m_before)
    m_now = report.add(Figure("model step per event, serving tower (no torch)", "us", model_us["served"]))
    report.ratio("model step per event, serving tower / torch", m_now, m_after)


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
