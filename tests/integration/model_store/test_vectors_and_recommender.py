"""load-vectors and the recommender against the real embedded PostgreSQL + pgvector."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

import asyncpg
import numpy as np
import pytest

from core.errors import ArtifactError, ModelNotReady, NotFoundError
from core.events import BrowseItem, UserFeatures
from core.recommendations import RecommendRequest, Source
from infra.objectstore import LocalStore
from infra.pg import create_pool, new_database
from model_store.artifacts import load_bundle
from model_store.loader import NEIGHBOURS, exact_neighbours, load_vectors, table_names
from model_store.model import load_state_dict, numpy_tower
from model_store.recommender import BadVector, ModelRecommender, feature_key
from model_store.serving import tower_from_npz

from .conftest import Artifacts, Catalog


def _exact_top(item_vectors: np.ndarray[Any, Any], query: np.ndarray[Any, Any], k: int) -> list[int]:
    return list(np.argsort(-(item_vectors @ query), kind="stable")[:k])


async def test_load_switches_atomically_and_stores_what_serving_needs(
    ms_database_url: str, artifacts: Artifacts, ms_pool: asyncpg.Pool[Any]
) -> None:
    v0, v1 = artifacts.versions
    first = await load_vectors(ms_database_url, artifacts.uri, v0)
    items = len(artifacts.models[0].data.item_ids)  # the products somebody rated (most of the 400)
    assert (first.version, first.items, first.users, first.already_loaded) == (v0, items, 150, False)
    assert items > 350
    bundle = load_bundle(LocalStore(artifacts.uri), v0)
    async with ms_pool.acquire() as conn:
        assert await conn.fetchval("SELECT version FROM model_versions WHERE active") == v0
        assert await conn.fetchval("SELECT count(*) FROM item_emb") == items  # the lab's name, a view
        assert await conn.fetchval("SELECT count(*) FROM user_emb") == 150
        stored = await conn.fetchval("SELECT embedding FROM item_emb WHERE id = $1", bundle.item_ids[7])
        np.testing.assert_array_equal(stored.to_numpy(), bundle.item_vectors[7])
        weights = await conn.fetchval("SELECT weights FROM model_versions WHERE version = $1", v0)
        # everything but the customers' ID embeddings (their vectors are the user table's rows)
        assert set(load_state_dict(bytes(weights))) == set(artifacts.models[0].state_dict) - {
            "user_tower.ids.weight"
        }
        _, user_table = table_names(v0)
        bought = await conn.fetchval(f"SELECT bought FROM {user_table} WHERE id = $1", bundle.user_ids[4])
        assert bought == bundle.user_bought[4] and len(bought) > 0
        item_table, _ = table_names(v0)
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%hnsw%'", item_table
        )
        assert "vector_ip_ops" in index
        row = await conn.fetchrow(
            "SELECT neighbour_ids, scores FROM item_neighbours WHERE version = $1 AND id = $2",
            v0,
            bundle.item_ids[3],
        )
        idx, _ = exact_neighbours(bundle.item_vectors, NEIGHBOURS)
        assert row["neighbour_ids"] == [bundle.item_ids[j] for j in idx[3]]
        assert list(row["scores"]) == sorted(row["scores"], reverse=True)
        popular = await conn.fetch("SELECT id FROM popular_items WHERE version = $1 ORDER BY rank", v0)
        assert [r["id"] for r in popular] == [p.id for p in bundle.popular]

    second = await load_vectors(ms_database_url, artifacts.uri, v1)
    assert second.version == v1
    again = await load_vectors(ms_database_url, artifacts.uri, v0)  # a rollback is a switch
    assert again.already_loaded
    async with ms_pool.acquire() as conn:
        assert [
            r["version"] for r in await conn.fetch("SELECT version FROM model_versions WHERE active")
        ] == [v0]


async def test_open_without_an_active_version_is_model_not_ready(database_url: str) -> None:
    url = await new_database(database_url, "model_store_empty")
    pool = await create_pool(url, max_size=2)
    try:
        with pytest.raises(ModelNotReady):
            await ModelRecommender.open(pool)
    finally:
        await pool.close()


@pytest.fixture
async def recommender(ms_database_url: str, artifacts: Artifacts, ms_pool: asyncpg.Pool[Any]) -> Any:
    await load_vectors(ms_database_url, artifacts.uri, artifacts.versions[0])
    rec = await ModelRecommender.open(ms_pool)
    try:
        yield rec
    finally:
        await rec.close()


def _requests(artifacts: Artifacts, n: int, seed: int) -> list[RecommendRequest]:
    rng = np.random.default_rng(seed)
    data = artifacts.models[0].data
    items = data.item_ids
    out = []
    for i in range(n):
        u = int(rng.integers(len(data.user_ids)))
        features = UserFeatures(
            data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
        )
        customer = 100 + u  # known to the version: answered from their own vector
        if i % 7 == 3:
            features = UserFeatures("Atlantis", "narnia", None)  # nothing known: popular items
            customer = 90_000 + i  # a customer the version does not know
        elif i % 6 == 2:
            customer = 80_000 + i  # cold start: from the features
        elif i % 5 == 1:
            features = UserFeatures("Atlantis", features.country, features.credit_limit)  # unknown city
        history = tuple(
            BrowseItem(items[int(j)], 1, bool(rng.random() < 0.3))
            for j in rng.choice(len(items), int(rng.integers(1, 6)), replace=False)
        )
        if i % 4 == 0:
            history = (*history, BrowseItem("NO_SUCH_ITEM", 1, True))
        out.append(RecommendRequest(customer, features, history, k=int(rng.choice([5, 10, 20]))))
    out.append(out[0])  # exact duplicate in the batch
    return out


async def test_batch_equals_one_by_one_and_follows_the_rules(
    recommender: ModelRecommender, artifacts: Artifacts
) -> None:
    requests = _requests(artifacts, 80, seed=3)
    batch = await recommender.recommend_batch(requests)
    one_by_one = [await recommender.recommend_one(r) for r in requests]
    assert batch == one_by_one
    assert len(batch) == len(requests)
    for req, rec in zip(requests, batch, strict=True):
        browsed = {b.product_code for b in req.browse_history}
        assert rec.model_version == artifacts.versions[0]
        assert len(rec.recommended_items) == req.k
        assert not browsed & {i.id for i in rec.recommended_items}
        assert not browsed & {i.id for i in rec.similar_items.similar_items}
        assert len(rec.similar_items.similar_items) == req.k
        cart = [
            b.product_code
            for b in req.browse_history
            if b.in_shopping_cart and b.product_code != "NO_SUCH_ITEM"
        ]
        if cart:
            assert rec.similar_items.product_code == cart[0]
        nothing_known = req.features.city == "Atlantis" and req.features.country == "narnia"
        assert rec.fallback is nothing_known
        assert rec.source is (Source.POPULAR if nothing_known else Source.MODEL)


async def test_pgvector_top10_matches_exact_top10(
    recommender: ModelRecommender, artifacts: Artifacts
) -> None:
    bundle = load_bundle(LocalStore(artifacts.uri), artifacts.versions[0])
    data = artifacts.models[0].data
    features = [
        UserFeatures(
            data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
        )
        for u in range(len(data.user_ids))
    ]
    vectors = await recommender.user_embeddings(features)
    hits = 0
    for vector in vectors:
        q = np.asarray(vector, dtype=np.float32)
        exact = {bundle.item_ids[i] for i in _exact_top(bundle.item_vectors, q, 10)}
        found = {item.id for item in await recommender.items_from_vector(vector, 10)}
        hits += len(exact & found)
    recall = hits / (10 * len(vectors))
    print(f"pgvector recall@10 at 400 items: {recall:.4f} (the planner may scan: exact)")
    assert recall >= 0.95


async def test_user_embeddings_are_the_features_only_cold_start_vectors(
    recommender: ModelRecommender, artifacts: Artifacts
) -> None:
    from model_store.model import ServingTower

    bundle = load_bundle(LocalStore(artifacts.uri), artifacts.versions[0])
    data = artifacts.models[0].data
    features = [
        UserFeatures(
            data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
        )
        for u in range(5)
    ]
    got = np.asarray(await recommender.user_embeddings(features), dtype=np.float32)
    tower, _ = bundle.towers()
    columns = {c: v[:5] for c, v in data.user_columns.items()}
    rows = bundle.user_transform.dense(columns)
    # the serving copy exactly, and the torch tower it copies within the drift test's bound
    served = numpy_tower(load_state_dict(bundle.weights), "user_tower")
    np.testing.assert_array_equal(got, served.embed(rows))
    assert float(np.abs(got - tower.embed(rows)).max()) <= 1e-6
    # the exported vectors of these (known) customers add their ID embeddings: not the same
    assert not np.allclose(got, bundle.user_vectors[:5], atol=1e-3)
    assert isinstance(tower, ServingTower) and tower.hybrid


async def test_the_user_tower_is_stored_as_arrays_and_a_version_without_them_loads_with_torch(
    ms_database_url: str, artifacts: Artifacts, ms_pool: asyncpg.Pool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    v0 = artifacts.versions[0]
    await load_vectors(ms_database_url, artifacts.uri, v0)
    bundle = load_bundle(LocalStore(artifacts.uri), v0)
    expected = numpy_tower(load_state_dict(bundle.weights), "user_tower")
    stored = await ms_pool.fetchval("SELECT user_tower FROM model_versions WHERE version = $1", v0)
    assert stored is not None
    for key, value in expected.arrays().items():
        np.testing.assert_array_equal(tower_from_npz(bytes(stored)).arrays()[key], value)
    data = artifacts.models[0].data
    features = [
        UserFeatures(
            data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
        )
        for u in range(20)
    ]
    with caplog.at_level(logging.INFO, logger="model_store.recommender"):
        rec = await ModelRecommender.open(ms_pool)
        try:
            from_arrays = await rec.user_embeddings(features)
        finally:
            await rec.close()
    assert "no array weights" not in caplog.text
    # a version loaded before the arrays were stored: read with torch, the same vectors
    await ms_pool.execute("UPDATE model_versions SET user_tower = NULL WHERE version = $1", v0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="model_store.recommender"):
        rec = await ModelRecommender.open(ms_pool)
        try:
            assert await rec.user_embeddings(features) == from_arrays
        finally:
            await rec.close()
    assert caplog.text.count(f"version {v0} has no array weights; loading torch") == 1
    # loading the version again fills the arrays in
    again = await load_vectors(ms_database_url, artifacts.uri, v0)
    assert again.already_loaded
    refilled = await ms_pool.fetchval("SELECT user_tower FROM model_versions WHERE version = $1", v0)
    assert refilled is not None and bytes(refilled) == bytes(stored)
    # damaged arrays: a clear error naming the version, never a pickle load
    await ms_pool.execute(
        "UPDATE model_versions SET user_tower = $2 WHERE version = $1", v0, bytes(stored)[:100]
    )
    try:
        with pytest.raises(ArtifactError, match=f"version {v0}: the tower's arrays cannot be read"):
            await ModelRecommender.open(ms_pool)
    finally:
        await ms_pool.execute("UPDATE model_versions SET user_tower = $2 WHERE version = $1", v0, stored)


async def test_a_serving_process_opens_the_version_and_answers_without_torch(
    recommender: ModelRecommender, ms_database_url: str, artifacts: Artifacts
) -> None:
    """A fresh interpreter opens the active version and answers a batch: torch is never imported."""
    request = _requests(artifacts, 1, seed=3)[0]
    features = (request.features.city, request.features.country, request.features.credit_limit)
    code = f"""
import asyncio, json, sys
from core.events import UserFeatures
from core.recommendations import RecommendRequest
from infra.pg import create_pool
from model_store.recommender import ModelRecommender

async def main():
    pool = await create_pool({ms_database_url!r}, min_size=1, max_size=2)
    rec = await ModelRecommender.open(pool, cache_keys=0)
    try:
        features = UserFeatures(*{features!r})
        out = await rec.recommend_batch([RecommendRequest(70_001, features, (), k=5)])
        return [item.id for item in out[0].recommended_items]
    finally:
        await rec.close()
        await pool.close()

items = asyncio.run(main())
print(json.dumps({{"items": items, "torch": "torch" in sys.modules}}))
"""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = await recommender.recommend_batch([RecommendRequest(70_001, request.features, (), k=5)])
    assert result == {"items": [i.id for i in expected[0].recommended_items], "torch": False}


def _exact_answer(bundle: Any, vector: np.ndarray[Any, Any], banned: set[str], k: int) -> list[str]:
    order = _exact_top(bundle.item_vectors, vector, len(bundle.item_ids))
    return [bundle.item_ids[i] for i in order if bundle.item_ids[i] not in banned][:k]


async def test_known_and_cold_start_customers_and_the_already_bought_filter(
    recommender: ModelRecommender, ms_pool: asyncpg.Pool[Any], artifacts: Artifacts
) -> None:
    bundle = load_bundle(LocalStore(artifacts.uri), artifacts.versions[0])
    data = artifacts.models[0].data
    u = 17
    customer = bundle.user_ids[u]
    bought = set(bundle.user_bought[u])
    features = UserFeatures(
        data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
    )
    browsed = (BrowseItem(bundle.item_ids[0], 1, False),)
    known, cold = await recommender.recommend_batch(
        [
            RecommendRequest(customer, features, browsed, k=10),
            RecommendRequest(70_001, features, browsed, k=10),  # same features, a new customer
        ]
    )
    # a known customer: their own vector (ID embedding + features), without what they bought
    mine = _exact_answer(bundle, bundle.user_vectors[u], bought | {bundle.item_ids[0]}, 10)
    assert [i.id for i in known.recommended_items] == mine
    assert not bought & {i.id for i in known.recommended_items}
    # a cold-start customer: the features-only vector, nothing of theirs to leave out
    vector = np.asarray((await recommender.user_embeddings([features]))[0], dtype=np.float32)
    assert [i.id for i in cold.recommended_items] == _exact_answer(bundle, vector, {bundle.item_ids[0]}, 10)
    assert known.recommended_items != cold.recommended_items
    # the API's path: the stored vector, the same filter; None for a customer the version lacks
    api = await recommender.recommend_customer(customer, 10)
    assert api is not None and [i.id for i in api.recommended_items] == _exact_answer(
        bundle, bundle.user_vectors[u], bought, 10
    )
    assert await recommender.recommend_customer(70_001, 10) is None
    # the filter is a setting: off, the customer's plain nearest items come back, bought ones included
    unfiltered = await ModelRecommender.open(ms_pool, exclude_bought=False)
    try:
        plain = await unfiltered.recommend_customer(customer, 10)
        assert plain is not None
        assert [i.id for i in plain.recommended_items] == _exact_answer(
            bundle, bundle.user_vectors[u], set(), 10
        )
        assert bought & {i.id for i in plain.recommended_items}  # this customer's top 10 has some
    finally:
        await unfiltered.close()


async def test_a_forgotten_customer_is_answered_from_their_features(
    ms_database_url: str, artifacts: Artifacts, ms_pool: asyncpg.Pool[Any]
) -> None:
    """``recsys forget`` deletes the customer's row while the version serves: the recommender, which
    still counts them as known, falls back to their features (and the API path has nothing)."""
    await load_vectors(ms_database_url, artifacts.uri, artifacts.versions[1])
    bundle = load_bundle(LocalStore(artifacts.uri), artifacts.versions[1])
    data = artifacts.models[1].data
    u = 3
    customer = bundle.user_ids[u]
    features = UserFeatures(
        data.user_columns["city"][u], data.user_columns["country"][u], data.user_columns["creditLimit"][u]
    )
    _, user_table = table_names(bundle.version)
    rec = await ModelRecommender.open(ms_pool, cache_keys=0)
    row = await ms_pool.fetchrow(f"SELECT id, embedding, bought FROM {user_table} WHERE id = $1", customer)
    await ms_pool.execute(f"DELETE FROM {user_table} WHERE id = $1", customer)
    try:
        answer = await rec.recommend_batch([RecommendRequest(customer, features, (), k=10)])
        vector = np.asarray((await rec.user_embeddings([features]))[0], dtype=np.float32)
        assert [i.id for i in answer[0].recommended_items] == _exact_answer(bundle, vector, set(), 10)
        assert await rec.recommend_customer(customer, 10) is None
    finally:
        await rec.close()
        await ms_pool.execute(
            f"INSERT INTO {user_table} (id, embedding, bought) VALUES ($1, $2, $3)", *row.values()
        )


async def test_similar_items_unknown_codes_and_bad_vectors(
    recommender: ModelRecommender, artifacts: Artifacts
) -> None:
    bundle = load_bundle(LocalStore(artifacts.uri), artifacts.versions[0])
    code = bundle.item_ids[11]
    idx, _ = exact_neighbours(bundle.item_vectors, 150)
    top10 = await recommender.similar_items(code, 10)
    assert [i.id for i in top10] == [bundle.item_ids[j] for j in idx[11][:10]]
    many = await recommender.similar_items(code, 150)  # beyond the precomputed lists: the index
    assert len(many) == 150 and code not in {i.id for i in many}
    assert len({i.id for i in many} & {bundle.item_ids[j] for j in idx[11]}) >= 140
    with pytest.raises(NotFoundError):
        await recommender.similar_items("NO_SUCH_ITEM", 5)
    with pytest.raises(BadVector, match="32"):
        await recommender.items_from_vector([0.1] * 31, 5)
    with pytest.raises(BadVector, match="non-finite"):
        await recommender.items_from_vector([float("nan")] + [0.1] * 31, 5)
    assert [i.id for i in await recommender.popular_items(3)] == [p.id for p in bundle.popular[:3]]
    only_unknown = await recommender.recommend_batch(
        [RecommendRequest(1, UserFeatures(" NANTES ", "France", 1000.0), (BrowseItem("NOPE", 1, True),), k=5)]
    )
    assert len(only_unknown[0].recommended_items) == 5 and not only_unknown[0].fallback
    assert only_unknown[0].similar_items.similar_items == ()
    assert feature_key(UserFeatures(" NANTES ", "France", float("inf"))) == ("nantes", "france", None)


async def test_hot_reload_switches_between_batches(
    recommender: ModelRecommender, ms_database_url: str, artifacts: Artifacts
) -> None:
    v0, v1 = artifacts.versions
    requests = _requests(artifacts, 10, seed=5)
    assert await recommender.refresh() is False
    before = await recommender.recommend_batch(requests)
    await load_vectors(ms_database_url, artifacts.uri, v1)
    # nothing changes until the process refreshes: a batch is answered by one version
    assert recommender.model_version == v0
    assert {r.model_version for r in await recommender.recommend_batch(requests)} == {v0}
    assert await recommender.refresh() is True
    assert recommender.model_version == v1
    after = await recommender.recommend_batch(requests)
    assert {r.model_version for r in after} == {v1}
    assert [r.recommended_items for r in after] != [r.recommended_items for r in before]
    assert await recommender.refresh() is False


@pytest.fixture
async def big_bundle(ms_database_url: str, big_catalog: Catalog) -> Any:
    """The 6000-item catalog, loaded and active."""
    from infra.pg import connect
    from model_store.loader import load_bundle_into

    conn = await connect(ms_database_url)
    try:
        await load_bundle_into(conn, big_catalog.bundle)
    finally:
        await conn.close()
    return big_catalog.bundle


async def _recall_at_10(rec: ModelRecommender, bundle: Any, users: int = 200) -> float:
    """recall@10 of ``items_from_vector`` against the exact top-10, over the first users' vectors."""
    position = {code: i for i, code in enumerate(bundle.item_ids)}
    hits = 0
    for q in bundle.user_vectors[:users]:
        exact = set(_exact_top(bundle.item_vectors, q, 10))
        hits += len(exact & {position[i.id] for i in await rec.items_from_vector(q.tolist(), 10)})
    return hits / (10 * users)


async def test_hnsw_path_recall_and_batch_identity_at_6000_items(
    ms_database_url: str, ms_pool: asyncpg.Pool[Any], big_catalog: Catalog, big_bundle: Any
) -> None:
    from pgvector import Vector

    from infra.pg import connect
    from model_store.recommender import _batch_sql

    bundle = big_bundle
    conn = await connect(ms_database_url)
    try:
        item_table, _ = table_names(bundle.version)
        item_table, user_table = table_names(bundle.version)
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + _batch_sql(item_table, user_table),
                [0, 1],
                [Vector(v) for v in bundle.user_vectors[:2]],
                [10, 10],
                "100",
                bundle.version,
                [],
                0,
                [bundle.user_ids[0], None],  # a known customer and a features-only query
                True,
            )
        )
    finally:
        await conn.close()
    assert "embedding_idx" in plan, plan  # the HNSW index answers, not a sequential scan

    from model_store.loader import RECALL_TARGET

    chosen = await ms_pool.fetchrow(
        "SELECT ef_search, ef_search_recall FROM model_versions WHERE version = $1", bundle.version
    )
    assert chosen["ef_search_recall"] >= RECALL_TARGET  # the loader's own sample reached the target
    rec = await ModelRecommender.open(ms_pool)  # the default: the width the loader chose
    try:
        assert rec.ef_search == chosen["ef_search"]
        recall = await _recall_at_10(rec, bundle)
        print(
            f"pgvector HNSW recall@10 vs exact top-10: {recall:.3f} (6000 items, default ef_search "
            f"{rec.ef_search}; the loader measured {chosen['ef_search_recall']:.3f} on its sample)"
        )
        assert recall >= 0.95  # another sample of queries than the loader's

        rng = np.random.default_rng(1)
        cols = big_catalog.user_columns
        requests = []
        for u in rng.integers(0, 1000, 120):
            history = tuple(
                BrowseItem(bundle.item_ids[int(j)], 1, bool(rng.random() < 0.3))
                for j in rng.choice(len(bundle.item_ids), int(rng.integers(1, 8)), replace=False)
            )
            features = UserFeatures(cols["city"][u], cols["country"][u], cols["creditLimit"][u])
            requests.append(RecommendRequest(int(u), features, history, k=int(rng.choice([5, 10, 30]))))
        batch = await rec.recommend_batch(requests)
        assert batch == [await rec.recommend_one(r) for r in requests]
        assert all(len(r.recommended_items) == q.k for r, q in zip(batch, requests, strict=True))
    finally:
        await rec.close()


async def test_ef_search_trades_recall(ms_pool: asyncpg.Pool[Any], big_bundle: Any) -> None:
    recall = {}
    for ef in (10, 400):
        rec = await ModelRecommender.open(ms_pool, ef_search=ef, cache_keys=0)
        try:
            recall[ef] = await _recall_at_10(rec, big_bundle)
        finally:
            await rec.close()
    assert recall[400] > recall[10]
    assert recall[400] >= 0.95


async def test_the_chosen_ef_search_grows_with_the_recall_target_and_the_catalog(
    ms_database_url: str, ms_pool: asyncpg.Pool[Any], big_bundle: Any
) -> None:
    from infra.pg import connect
    from model_store.loader import EF_SEARCH_STEPS, tune_ef_search

    item_table, _ = table_names(big_bundle.version)
    items = np.asarray(big_bundle.item_vectors, dtype=np.float32)
    queries = np.asarray(big_bundle.user_vectors[:150], dtype=np.float32)
    conn = await connect(ms_database_url)
    try:
        widths = [
            await tune_ef_search(conn, item_table, list(big_bundle.item_ids), items, queries, target=target)
            for target in (0.5, 0.9, 0.98, 1.0)
        ]
        # a 300-item catalog (the same vectors' first rows): the narrowest width is already exact
        async with conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE small_items ON COMMIT DROP AS SELECT * FROM {item_table} "
                "WHERE id = ANY($1::text[])",
                list(big_bundle.item_ids[:300]),
            )
            await conn.execute("CREATE INDEX ON small_items USING hnsw (embedding vector_ip_ops)")
            small = await tune_ef_search(
                conn, "small_items", list(big_bundle.item_ids[:300]), items[:300], queries, target=0.98
            )
    finally:
        await conn.close()
    chosen = [w.ef_search for w in widths]
    assert chosen == sorted(chosen), widths
    assert all(
        w.recall >= t or w.ef_search == EF_SEARCH_STEPS[-1]
        for w, t in zip(widths, (0.5, 0.9, 0.98, 1.0), strict=True)
    )
    assert chosen[-1] > chosen[0]
    assert small.ef_search == EF_SEARCH_STEPS[0] and small.recall >= 0.98
    assert widths[2].ef_search > small.ef_search  # 6000 items need a wider search than 300

    # an explicit width overrides the version's
    rec = await ModelRecommender.open(ms_pool, ef_search=40, cache_keys=0)
    try:
        assert rec.ef_search == 40
    finally:
        await rec.close()


async def test_the_index_is_built_with_maintenance_work_mem_sized_from_the_catalog(
    database_url: str, big_catalog: Catalog
) -> None:
    from infra.pg import _init_connection, new_database
    from model_store.loader import build_memory_kb, load_bundle_into

    seen: list[int] = []

    class Recording(asyncpg.Connection):  # type: ignore[misc]
        async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
            if query.lstrip().upper().startswith("CREATE INDEX"):  # read back inside the build's transaction
                seen.append(
                    int(
                        await self.fetchval(
                            "SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'"
                        )
                    )
                )
            result: str = await super().execute(query, *args, **kwargs)
            return result

    bundle = big_catalog.bundle
    conn = await asyncpg.connect(await new_database(database_url, "loader_mwm"), connection_class=Recording)
    try:
        await _init_connection(conn)
        await conn.execute("SET maintenance_work_mem = '1MB'")  # below what the loader asks for
        await load_bundle_into(conn, bundle)
        after = int(
            await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'")
        )
    finally:
        await conn.close()
    assert seen == [build_memory_kb(len(bundle.item_ids), bundle.config.embedding_dim)]
    assert seen[0] > 1024
    assert after == 1024  # SET LOCAL: the session's own value once the load's transaction ended


async def test_a_server_that_cannot_give_the_build_memory_builds_with_its_own(
    database_url: str, big_catalog: Catalog
) -> None:
    from infra.pg import _init_connection, new_database
    from model_store.loader import load_bundle_into

    seen: list[int] = []

    class Refusing(asyncpg.Connection):  # type: ignore[misc]
        async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
            if query.lstrip().upper().startswith("CREATE INDEX"):
                memory = await self.fetchval(
                    "SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'"
                )
                seen.append(int(memory))
                if int(memory) > 1024:  # what a server short of memory answers (SQLSTATE 53200)
                    raise asyncpg.OutOfMemoryError("could not resize shared memory segment")
            result: str = await super().execute(query, *args, **kwargs)
            return result

    url = await new_database(database_url, "loader_oom")
    conn = await asyncpg.connect(url, connection_class=Refusing)
    try:
        await _init_connection(conn)
        await conn.execute("SET maintenance_work_mem = '1MB'")
        summary = await load_bundle_into(conn, big_catalog.bundle)
        assert await conn.fetchval("SELECT version FROM model_versions WHERE active") == summary.version
    finally:
        await conn.close()
    assert len(seen) == 2 and seen[0] > 1024 and seen[1] == 1024  # the savepoint undid the setting
    assert summary.ef_search is not None


async def test_the_candidate_cache_answers_exactly_what_the_index_answers(
    ms_pool: asyncpg.Pool[Any], big_catalog: Catalog, big_bundle: Any
) -> None:
    bundle = big_bundle
    rng = np.random.default_rng(2)
    cols = big_catalog.user_columns
    users = [int(u) for u in rng.choice(1000, 40, replace=False)]  # 40 keys, 25 kept: some leave

    def request(u: int, k: int, browsed: int) -> RecommendRequest:
        history = tuple(
            BrowseItem(bundle.item_ids[int(j)], 1, bool(rng.random() < 0.3))
            for j in rng.choice(len(bundle.item_ids), browsed, replace=False)
        )
        return RecommendRequest(
            u, UserFeatures(cols["city"][u], cols["country"][u], cols["creditLimit"][u]), history, k
        )

    # mostly shallow asks; some past ef_search (iterative scan), some past the cache's kept depth
    requests = [
        request(
            users[int(rng.integers(40))],
            int(rng.choice([5, 10, 30, 150, 250], p=[0.4, 0.3, 0.2, 0.05, 0.05])),
            int(rng.integers(1, 9)),
        )
        for _ in range(400)
    ]
    seen: list[tuple[str, int, int]] = []
    plain = await ModelRecommender.open(ms_pool, cache_keys=0)
    cached = await ModelRecommender.open(
        ms_pool, cache_keys=25, observe=lambda cache, hits, misses: seen.append((cache, hits, misses))
    )
    try:
        answers = []
        for start in range(0, len(requests), 50):
            answers += await cached.recommend_batch(requests[start : start + 50])
        assert answers == [await plain.recommend_one(r) for r in requests]
        hits = sum(h for cache, h, _ in seen if cache == "candidates")
        misses = sum(m for cache, _, m in seen if cache == "candidates")
        assert hits > 0 and misses > 0
        assert sum(h for cache, h, _ in seen if cache == "neighbours") > 0

        repeat = [request(u, 5, 2) for u in users[:5]]
        first = await cached.recommend_batch(repeat)
        seen.clear()
        assert await cached.recommend_batch(repeat) == first == [await plain.recommend_one(r) for r in repeat]
        assert [(cache, misses) for cache, _, misses in seen] == [("candidates", 0), ("neighbours", 0)]
    finally:
        await plain.close()
        await cached.close()


async def test_a_process_whose_version_was_dropped_moves_to_the_active_one(
    recommender: ModelRecommender, ms_database_url: str, artifacts: Artifacts
) -> None:
    v0, v1 = artifacts.versions
    assert recommender.model_version == v0
    summary = await load_vectors(ms_database_url, artifacts.uri, v1, keep=1)  # drops v0's tables
    assert v0 in summary.dropped
    code = artifacts.models[1].data.item_ids[0]
    assert len(await recommender.similar_items(code, 5)) == 5  # v0's neighbours are gone: refreshed
    assert recommender.model_version == v1
    await load_vectors(ms_database_url, artifacts.uri, v0, keep=1)  # and back, dropping v1
    answers = await recommender.recommend_batch(_requests(artifacts, 5, seed=9))
    assert {a.model_version for a in answers} == {v0}


async def test_a_features_version_like_the_labs_answers_from_the_event_features(
    ms_database_url: str, artifacts: Artifacts, ms_pool: asyncpg.Pool[Any]
) -> None:
    """A lab-made version (``import-lab-artifacts``: manifest kind ``features``, no bought lists) keeps
    today's path: every event from its features, the API from the stored vector, nothing filtered."""
    import dataclasses

    from infra.pg import connect
    from model_store.artifacts import new_version
    from model_store.loader import load_bundle_into

    hybrid = load_bundle(LocalStore(artifacts.uri), artifacts.versions[0])
    lab_like = dataclasses.replace(
        hybrid,
        version=new_version(hybrid.weights + b"lab"),
        config=dataclasses.replace(hybrid.config, kind="features"),
        user_bought=None,
        stored_manifest={},
    )
    conn = await connect(ms_database_url)
    try:
        await load_bundle_into(conn, lab_like)
        kind = await conn.fetchval(
            "SELECT manifest->'model'->>'kind' FROM model_versions WHERE version = $1", lab_like.version
        )
    finally:
        await conn.close()
    assert kind == "features"
    data = artifacts.models[0].data
    rec = await ModelRecommender.open(ms_pool, cache_keys=0)
    try:
        customer = lab_like.user_ids[5]
        other = 9  # the event carries another profile: a features version answers from it
        features = UserFeatures(
            data.user_columns["city"][other],
            data.user_columns["country"][other],
            data.user_columns["creditLimit"][other],
        )
        (answer,) = await rec.recommend_batch([RecommendRequest(customer, features, (), k=10)])
        vector = np.asarray((await rec.user_embeddings([features]))[0], dtype=np.float32)
        assert [i.id for i in answer.recommended_items] == _exact_answer(lab_like, vector, set(), 10)
        api = await rec.recommend_customer(customer, 10)
        assert api is not None
        assert [i.id for i in api.recommended_items] == _exact_answer(
            lab_like, lab_like.user_vectors[5], set(), 10
        )
    finally:
        await rec.close()
