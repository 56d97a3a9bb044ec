"""Answers never outlive their model: two real versions whose catalogs differ, loaded one after the
other into a database of this module's own, under the API with its own model handle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from core.recommendations import LatestRow, Recommendation, ScoredItem, SimilarItems, Source
from infra.latest import PgLatestStore
from infra.pg import create_pool, new_database
from recsys.runtime import api_app
from recsys.settings import Settings, TrainSettings


@pytest.fixture(scope="module")
def other_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(artifacts URI, version): the same 60 customers, products all renamed (``T...``)."""
    from model_store.artifacts import export_trained
    from model_store.testing import synthetic_ratings
    from model_store.training import fit

    root: Path = tmp_path_factory.mktemp("other-catalog")
    table = synthetic_ratings(n_customers=60, n_products=50, ratings_per_customer=20, seed=4)
    codes = ["T" + code[1:] for code in table.column("productCode").to_pylist()]
    table = table.set_column(table.schema.get_field_index("productCode"), "productCode", pa.array(codes))
    return str(root), export_trained(str(root), fit(table, TrainSettings(seed=2, epochs=3)))


def _row(customer: int, version: str, items: list[str]) -> LatestRow:
    now = datetime.now(UTC)
    scored = tuple(ScoredItem(code, 0.9 - i / 100) for i, code in enumerate(items))
    rec = Recommendation(scored, SimilarItems(items[0], scored[1:]), version, Source.STREAM)
    return LatestRow(customer, rec, f"shard:{customer}:{version}", now, now)


async def test_a_new_version_with_another_catalog_retires_the_stored_answers(
    database_url: str, small_model: tuple[str, str], other_catalog: tuple[str, str]
) -> None:
    from model_store.loader import load_vectors
    from service.model import open_recommender

    url = await new_database(database_url, "answers")
    await load_vectors(url, *small_model)
    first = small_model[1]
    pool = await create_pool(url, min_size=1, max_size=4)
    app = api_app(Settings(database_url=url), pool=pool)  # opens the active version itself
    try:
        async with app.router.lifespan_context(app):
            slot = app.state.services.model
            await asyncio.wait_for(slot.wait_loaded(), 30)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:

                async def get(path: str, **params: Any) -> Any:
                    resp = await client.get(path, params=params)
                    assert resp.status_code == 200, resp.text
                    return resp.json()

                first_catalog = {r["id"] for r in await pool.fetch("SELECT id FROM item_emb")}
                # customer 104 has no streamed answer: the version's own, computed when it was loaded
                model_104 = await get("/recommendations/104", limit=7)
                assert model_104["source"] == "model" and model_104["model_version"] == first
                stored = await pool.fetchval(
                    "SELECT count(*) FROM customer_answers WHERE version = $1", first
                )
                assert stored == 60
                recommender = await open_recommender(pool)
                try:  # the stored answer is the one the scan per request gives
                    scanned = await recommender.recommend_customer(104, 7)
                finally:
                    await recommender.close()
                assert scanned is not None
                assert model_104["recommended_items"] == [i.to_json() for i in scanned.recommended_items]

                # customer 103 browsed: the consumer stored an answer of the first version
                await PgLatestStore(pool).upsert_many([_row(103, first, sorted(first_catalog)[:10])])
                assert (await get("/recommendations/103"))["source"] == "stream"

                # a new version with another catalog is loaded; the consumer already answers with it
                await load_vectors(url, *other_catalog)
                second = other_catalog[1]
                second_catalog = {r["id"] for r in await pool.fetch("SELECT id FROM item_emb")}
                assert not first_catalog & second_catalog
                await PgLatestStore(pool).upsert_many([_row(105, second, sorted(second_catalog)[:10])])
                fresh = await get("/recommendations/105")
                assert (fresh["source"], fresh["model_version"]) == ("stream", second)
                assert slot.get().model_version == second  # the API followed the newer answer

                # 103's answer is the first version's: not served, 103 is answered from the second
                answer = await get("/recommendations/103")
                assert answer["source"] == "model" and answer["model_version"] == second
                items = [i["id"] for i in answer["recommended_items"]]
                assert items and set(items) <= second_catalog
                for item in items:  # and the API's other routes know every one of them
                    assert (await client.get("/items_from_item", params={"item_id": item})).status_code == 200
                unknown = await get("/recommendations/99999")
                assert unknown["source"] == "popular" and unknown["model_version"] == second
                assert {i["id"] for i in unknown["recommended_items"]} <= second_catalog
    finally:
        await pool.close()
