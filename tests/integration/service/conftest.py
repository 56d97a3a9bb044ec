"""Fixtures of the API tests: the real app on the real PostgreSQL, with a deterministic fake model."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from infra.pg import create_pool, new_database
from recsys.runtime import api_app
from recsys.settings import Settings, TrainSettings
from recsys.testing import (
    KNOWN_CUSTOMER,
    KNOWN_CUSTOMERS,
    SERVING_DIM,
    SERVING_ITEMS,
    UNKNOWN_CUSTOMER,
    BadServingVector,
)
from recsys.testing import FakeServingRecommender as FakeRecommender

# the API tests' fake model and its catalog live with every other double, in recsys.testing
__all__ = [
    "DIM",
    "ITEMS",
    "KNOWN_CUSTOMER",
    "KNOWN_CUSTOMERS",
    "UNKNOWN_CUSTOMER",
    "BadVector",
    "FakeRecommender",
]
DIM = SERVING_DIM
ITEMS = SERVING_ITEMS
BadVector = BadServingVector
T = TypeVar("T")


def until(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll an observable condition of a running system (its processes, its HTTP answers), with a
    deadline: the tests' only way to wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def until_async(predicate: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    """:func:`until` for a condition read with awaits (the app in this loop, asyncpg)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        app: FastAPI = api_app(
            settings,
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
