"""Fixtures of the model store's integration tests: a database of their own, a loaded model version.

The session database is shared with the other parts' tests; these tests switch versions on and off,
so they run in a fresh database on the same embedded server (migrated like any other).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra.pg import create_pool, new_database
from model_store.artifacts import export_trained
from model_store.testing import catalog_bundle, synthetic_ratings
from model_store.training import TrainedModel, fit
from recsys.settings import TrainSettings


@pytest.fixture(scope="session")
async def ms_database_url(database_url: str) -> str:
    return await new_database(database_url, "model_store")


@pytest.fixture
async def ms_pool(ms_database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(ms_database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Artifacts:
    uri: str
    versions: list[str]
    models: list[TrainedModel]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """Two versions trained on the same synthetic data with different seeds (for hot reload)."""
    root: Path = tmp_path_factory.mktemp("artifacts")
    table = synthetic_ratings(n_customers=150, n_products=400, ratings_per_customer=30, seed=4)
    out = Artifacts(str(root), [], [])
    for seed in (1, 2):
        model = fit(table, TrainSettings(seed=seed, epochs=15))
        out.versions.append(export_trained(str(root), model))
        out.models.append(model)
    return out


@dataclass
class Catalog:
    """A version whose 6000-item catalog is large enough for the planner to use the HNSW index."""

    bundle: Any
    user_columns: dict[str, list[Any]]
    item_ids: list[str]


@pytest.fixture(scope="session")
def big_catalog(artifacts: Artifacts) -> Catalog:
    from model_store.training import PopularItem, prepare

    data = prepare(synthetic_ratings(n_customers=20_000, n_products=6_000, ratings_per_customer=1, seed=6))
    bundle = catalog_bundle(
        artifacts.models[0],
        data,
        users=1000,
        popular=[PopularItem(code, 4.0, 1) for code in data.item_ids[:50]],
    )
    return Catalog(bundle, data.user_columns, data.item_ids)
