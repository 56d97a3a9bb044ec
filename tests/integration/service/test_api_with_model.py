"""The API with the model store's real recommender: a small model trained on synthetic ratings and
loaded into a database of these tests' own (versions are switched there, not in the shared one)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from infra.pg import create_pool
from recsys.runtime import api_app
from recsys.settings import Settings


@asynccontextmanager
async def served(url: str, *, own_model: bool) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    from service.model import open_recommender

    pool = await create_pool(url, min_size=1, max_size=4)
    recommender = None if own_model else await open_recommender(pool)
    app = api_app(Settings(database_url=url), pool=pool, recommender=recommender)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                yield client, app
    finally:
        if recommender is not None:
            await recommender.close()
        await pool.close()


async def test_model_and_popular_paths_with_the_real_model(
    model_db: str, small_model: tuple[str, str]
) -> None:
    version = small_model[1]
    async with served(model_db, own_model=False) as (client, _):
        known = await client.get("/recommendations/103", params={"limit": 5})
        unknown = await client.get("/recommendations/99999", params={"limit": 5})
    assert known.status_code == 200
    assert known.json()["source"] == "model"
    assert known.json()["model_version"] == version
    assert len(known.json()["recommended_items"]) == 5
    assert unknown.json()["source"] == "popular"
    assert unknown.json()["model_version"] == version
    assert len(unknown.json()["recommended_items"]) == 5


async def test_lab_endpoints_with_the_real_model(model_db: str) -> None:
    async with served(model_db, own_model=False) as (client, _):
        emb = await client.post(
            "/user_embeddings", json=[{"city": "Nantes", "country": "France", "creditlimit": 21000}]
        )
        vector = emb.json()[0]
        from_user = await client.post("/items_from_user", params={"limit": 4}, json=vector)
        item = from_user.json()[0]["id"]
        from_item = await client.get("/items_from_item", params={"item_id": item, "limit": 3})
        unknown = await client.get("/items_from_item", params={"item_id": "S99_0000"})
        short = await client.post("/items_from_user", json=vector[:-1])
        zeros = await client.post("/items_from_user", json=[0.0] * len(vector))
    assert emb.status_code == 200 and len(vector) == 32
    assert from_user.status_code == 200 and len(from_user.json()) == 4
    assert from_item.status_code == 200 and item not in {i["id"] for i in from_item.json()}
    assert unknown.status_code == 404 and "S99_0000" in unknown.json()["reason"]
    assert short.status_code == 422 and "32" in short.json()["reason"]
    assert zeros.status_code == 422


async def test_an_app_without_a_model_opens_it_itself(model_db: str, small_model: tuple[str, str]) -> None:
    async with served(model_db, own_model=True) as (client, app):
        loaded = await asyncio.wait_for(app.state.services.model.wait_loaded(), 30)
        ready = await client.get("/readyz")
    assert loaded.model_version == small_model[1]
    assert ready.status_code == 200
    assert ready.json()["model_version"] == small_model[1]


async def test_query_vectors_are_taken_for_their_direction(model_db: str) -> None:
    """Before: 1e300s overflowed the norm (200, all-zero scores) and 1e-300s underflowed it (422)."""
    async with served(model_db, own_model=False) as (client, _):
        emb = await client.post("/user_embeddings", json=[{"city": "Nantes", "creditlimit": 21000}])
        unit = emb.json()[0]
        answers = [
            await client.post("/items_from_user", params={"limit": 5}, json=[x * scale for x in unit])
            for scale in (1.0, 1e5, 1e-300)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    first = answers[0].json()
    assert any(item["score"] != 0 for item in first)
    for other in answers[1:]:
        assert [i["id"] for i in other.json()] == [i["id"] for i in first]
        assert [i["score"] for i in other.json()] == pytest.approx([i["score"] for i in first], abs=1e-5)


async def test_the_largest_credit_limit_gives_a_usable_embedding(model_db: str) -> None:
    async with served(model_db, own_model=False) as (client, _):
        resp = await client.post("/user_embeddings", json=[{"creditlimit": 1e9}, {"creditlimit": 0}])
    assert resp.status_code == 200
    for vector in resp.json():
        assert len(vector) == 32
        assert all(math.isfinite(x) for x in vector)
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)


async def test_text_the_database_cannot_hold_is_the_callers_error(model_db: str) -> None:
    """The recommender maps PostgreSQL's refusal of a NUL to a UserError (422), not an outage (503)."""
    from core.errors import UserError
    from service.model import open_recommender

    pool = await create_pool(model_db, min_size=1, max_size=2)
    recommender = await open_recommender(pool)
    try:
        with pytest.raises(UserError) as caught:
            await recommender.similar_items("x\x00y", 5)
    finally:
        await recommender.close()
        await pool.close()
    assert "product code" in str(caught.value)
