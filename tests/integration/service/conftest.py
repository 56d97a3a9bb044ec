"""Fixtures of the API tests: the real app on the real PostgreSQL, with a deterministic fake model."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from core.errors import NotFoundError, UserError
from core.events import UserFeatures
from core.recommendations import Recommendation, RecommendRequest, ScoredItem, SimilarItems
from infra.pg import create_pool, new_database
from recsys.settings import Settings, TrainSettings
from service.app import create_app

DIM = 32
ITEMS = tuple(f"S10_{1000 + i}" for i in range(40))
# far from the shop's customer numbers: other parts' tests store streamed answers for those in the
# shared session database, and a stored answer takes precedence over the model path
KNOWN_CUSTOMER = 2_000_000_103
UNKNOWN_CUSTOMER = 2_000_000_999
KNOWN_CUSTOMERS = frozenset({KNOWN_CUSTOMER, 2_000_000_112, 2_000_000_114})


class BadVector(UserError):
    pass


def run_settings(database_url: str, stream: str, delivery: str, tmp_path: Path, **consumer: Any) -> Settings:
    """Settings of a `recsys run` under test: any free port, dead letters under ``tmp_path``, leases
    taken and shards polled every 0.2 s; ``consumer`` adds or overrides consumer settings."""
    return Settings(
        database_url=database_url,
        stream=stream,
        delivery_stream=delivery,
        dead_letters=str(tmp_path / "dead-letters"),
        port=0,
        consumer={"lease_take_interval_s": 0.2, "poll_interval_s": 0.2, **consumer},
    )


def _vector(seed: str) -> list[float]:
    digest = hashlib.sha256(seed.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _ranked(seed: str, k: int, banned: frozenset[str] = frozenset()) -> list[ScoredItem]:
    order = sorted(ITEMS, key=lambda code: hashlib.sha256(f"{seed}/{code}".encode()).hexdigest())
    picked = [code for code in order if code not in banned][:k]
    return [ScoredItem(code, round(0.99 - 0.01 * i, 6)) for i, code in enumerate(picked)]


class FakeRecommender:
    """Deterministic answers from hashes; records what it was asked (state, not call counts)."""

    def __init__(self, version: str = "fake-v1") -> None:
        self._version = version
        self.asked_customers: list[int] = []
        self.closed = False

    @property
    def model_version(self) -> str:
        return self._version

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        return [
            Recommendation(tuple(_ranked(str(r.features), r.k)), SimilarItems(None, ()), self._version)
            for r in requests
        ]

    async def recommend_customer(self, customer_number: int, k: int) -> Recommendation | None:
        self.asked_customers.append(customer_number)
        if customer_number not in KNOWN_CUSTOMERS:
            return None
        return Recommendation(
            tuple(_ranked(f"customer/{customer_number}", k)), SimilarItems(None, ()), self._version
        )

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        if product_code not in ITEMS:
            raise NotFoundError(f"unknown item {product_code!r}")
        return _ranked(f"item/{product_code}", k, frozenset({product_code}))

    async def popular_items(self, k: int) -> list[ScoredItem]:
        return [ScoredItem(code, round(1.0 / (i + 1), 6)) for i, code in enumerate(ITEMS[:k])]

    async def user_embeddings(self, features: Sequence[UserFeatures]) -> list[list[float]]:
        return [_vector(f"{f.city}|{f.country}|{f.credit_limit}") for f in features]

    async def items_from_vector(self, vector: Sequence[float], k: int) -> list[ScoredItem]:
        if len(vector) != DIM:
            raise BadVector(f"the vector has {len(vector)} values; the model's dimension is {DIM}")
        if not all(math.isfinite(x) for x in vector):
            raise BadVector("the vector has non-finite values")
        return _ranked(f"vector/{[round(x, 3) for x in vector]}", k)

    async def refresh(self) -> bool:
        return False

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="session")
async def api_pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def api_client(api_pool: asyncpg.Pool[Any], database_url: str) -> AppClient:
    """``async with api_client(token=..., recommender=...) as client``: the app, its lifespan run."""

    @asynccontextmanager
    async def make(
        *,
        token: str | None = None,
        recommender: Any = "fake",
        shared_pool: bool = True,
        open_model: Any = None,
        **api: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(database_url=database_url, api_token=token, api=api or {})
        model = FakeRecommender() if recommender == "fake" else recommender
        app: FastAPI = create_app(
            settings.for_api(),
            pool=api_pool if shared_pool else None,
            recommender=model,
            open_model=open_model,
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                yield client

    return make


# ---------------------------------------------------------------- the real model, small


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(artifacts URI, version): 60 customers (100..159), 50 products, a few epochs."""
    from model_store.artifacts import export_trained
    from model_store.testing import synthetic_ratings
    from model_store.training import fit

    root: Path = tmp_path_factory.mktemp("api-artifacts")
    table = synthetic_ratings(n_customers=60, n_products=50, ratings_per_customer=20, seed=3)
    model = fit(table, TrainSettings(seed=1, epochs=4))
    yield str(root), export_trained(str(root), model)


@pytest.fixture(scope="session")
async def model_db(database_url: str, small_model: tuple[str, str]) -> str:
    from model_store.loader import load_vectors

    url = await new_database(database_url, "api")
    await load_vectors(url, *small_model)
    return url


# ---------------------------------------------------------------- `recsys serve` as a process


@contextmanager
def serve_process(database_url: str, **env: str) -> Iterator[tuple[str, int]]:
    """`recsys serve --port 0` as a subprocess, with ``env`` (``RECSYS_*`` variables) on top of a
    clean environment: yields its URL and process id once it accepts requests; SIGTERM at the end."""
    import os
    import signal
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    recsys = str(Path(sys.executable).with_name("recsys"))
    proc = subprocess.Popen(
        [recsys, "serve", "--port", "0", "--database-url", database_url],
        env=clean | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the server accepts requests
        assert banner.startswith("API on http://"), f"recsys serve did not start: {banner!r}"
        yield banner.split()[2], proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
