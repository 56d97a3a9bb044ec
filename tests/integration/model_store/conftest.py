"""Fixtures of the model store's integration tests: a database of their own, a loaded model version.

The session database is shared with the other parts' tests; these tests switch versions on and off,
so they run in a fresh database on the same embedded server (migrated like any other).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from recsys.infra.pg import create_pool, migrate
from recsys.model_store.artifacts import export_trained
from recsys.model_store.testing import synthetic_ratings
from recsys.model_store.training import TrainedModel, fit
from recsys.settings import TrainSettings


@pytest.fixture(scope="session")
async def ms_database_url(database_url: str) -> str:
    name = f"model_store_{uuid.uuid4().hex[:10]}"
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    url = database_url.rsplit("/", 1)[0] + "/" + name
    await migrate(url)
    return url


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
