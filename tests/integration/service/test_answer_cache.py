"""Stored answers kept in memory by the API, on the real PostgreSQL: the triggers' notifications
(``sql/0230_answer_notify.sql``), and the API following the table through writes, deletes and the
loss of its listener."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from prometheus_client import REGISTRY

from core.recommendations import LatestRow, Recommendation, ScoredItem, SimilarItems
from infra.answer_changes import APPLICATION_NAME, CHANNEL
from infra.latest import PgLatestStore
from infra.pg import connect, create_pool, load_migrations, new_database
from recsys.runtime import api_app
from recsys.settings import Settings
from recsys.testing import FakeServingRecommender
from service.answer_cache import AnswerCache

from .conftest import until_async

BASE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _customer() -> int:
    return 1_000_000_000 + uuid.uuid4().int % 900_000_000


def _row(customer: int, n: int) -> LatestRow:
    """The customer's n-th streamed answer (newer for a larger n)."""
    items = tuple(ScoredItem(f"S18_{2000 + i + n}", 0.9 - i / 100) for i in range(5))
    rec = Recommendation(items, SimilarItems("S10_1678", items[1:]), "fake-v1")
    at = BASE + timedelta(seconds=n)
    return LatestRow(customer, rec, f"shardId-000000000000:{customer}:{n}", at, at)


def _hits() -> float:
    return REGISTRY.get_sample_value("recsys_api_answer_cache_lookups_total", {"result": "hit"}) or 0.0


async def test_a_statement_announces_the_customers_it_changed(database_url: str) -> None:
    url = await new_database(database_url, "notify")
    listener = await connect(url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda *args: got.put_nowait(args[-1]))
    pool = await create_pool(url, min_size=1, max_size=2)
    store = PgLatestStore(pool)
    try:
        await store.upsert_many([_row(7, 1), _row(8, 1), _row(9, 1)])
        assert sorted(map(int, (await asyncio.wait_for(got.get(), 10)).split(","))) == [7, 8, 9]
        await store.upsert_many([_row(7, 0)])  # older than the stored one: nothing changes, nothing said
        await store.upsert_many([_row(8, 2)])  # an update
        assert await asyncio.wait_for(got.get(), 10) == "8"
        await store.upsert_many([_row(c, 1) for c in range(1000, 1600)])  # past 500: everyone
        assert await asyncio.wait_for(got.get(), 10) == "*"
        await pool.execute("DELETE FROM latest_recommendations WHERE customer_number = 9")
        assert await asyncio.wait_for(got.get(), 10) == "9"
        await pool.execute("DELETE FROM customer_answers WHERE customer_number = 9")
        assert await asyncio.wait_for(got.get(), 10) == "*"
        await pool.execute("TRUNCATE latest_recommendations")
        assert await asyncio.wait_for(got.get(), 10) == "*"
        assert got.empty()
    finally:
        await listener.close()
        await pool.close()


async def test_the_api_keeps_answers_and_follows_every_change(database_url: str) -> None:
    url = await new_database(database_url, "kept")
    pool = await create_pool(url, min_size=1, max_size=4)
    settings = Settings(database_url=url, api={"answer_cache_ttl_s": 3600})
    app = api_app(settings, pool=pool, recommender=FakeServingRecommender())
    store = PgLatestStore(pool)
    customer = _customer()
    try:
        async with app.router.lifespan_context(app):
            cache = app.state.services.answers
            assert isinstance(cache, AnswerCache)

            async def is_live() -> bool:
                return cache.live

            await until_async(is_live, 15, "the listener")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:

                async def answer() -> dict[str, Any]:
                    resp = await client.get(f"/recommendations/{customer}")
                    assert resp.status_code == 200, resp.text
                    body: dict[str, Any] = resp.json()
                    return body

                def shows(n: int) -> Callable[[], Awaitable[bool]]:
                    async def check() -> bool:
                        return (await answer())["event_id"] == _row(customer, n).event_id

                    return check

                await store.upsert_many([_row(customer, 1)])
                assert (await answer())["event_id"] == _row(customer, 1).event_id

                async def from_memory() -> bool:
                    # a read that started before the write's notification arrived is not kept
                    # (it may have raced the change); the next one is
                    hits = _hits()
                    assert (await answer())["event_id"] == _row(customer, 1).event_id
                    return _hits() == hits + 1

                await until_async(from_memory, 15, "a read answered from memory")

                await store.upsert_many([_row(customer, 2)])  # the consumer stores a newer answer
                await until_async(
                    shows(2), 15, "the newer streamed answer (the kept one outlives it for an hour)"
                )
                assert (await answer())["source"] == "stream"

                await pool.execute("DELETE FROM latest_recommendations WHERE customer_number = $1", customer)

                async def forgotten() -> bool:
                    return (await answer())["source"] != "stream"

                await until_async(forgotten, 15, "the deleted answer to go")

                # the listener's connection is killed: nothing kept is trusted until it is back
                await store.upsert_many([_row(customer, 3)])
                await until_async(shows(3), 15, "answer 3")
                killed = await pool.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    APPLICATION_NAME,
                )
                assert killed == 1

                async def is_down() -> bool:
                    return not cache.live or len(cache) == 0

                await until_async(is_down, 15, "the lost listener to be noticed")
                await store.upsert_many([_row(customer, 4)])
                await until_async(shows(4), 15, "answer 4 while the listener is down or back")
                await until_async(is_live, 15, "the listener to reconnect")
                assert (await answer())["event_id"] == _row(customer, 4).event_id
                await store.upsert_many([_row(customer, 5)])
                await until_async(shows(5), 15, "answer 5 after the reconnection")
    finally:
        await pool.close()


async def test_nothing_is_kept_until_the_database_announces_changes(database_url: str) -> None:
    """An API on a database without migration 0230 (``recsys serve`` does not migrate) would never
    hear of a change: it reads every answer from the database until the triggers are there."""
    from infra.answer_changes import AnswerChanges

    url = await new_database(database_url, "unmigrated")
    pool = await create_pool(url, min_size=1, max_size=2)
    await pool.execute("DROP TRIGGER latest_inserted ON latest_recommendations")
    live: list[bool] = []
    changes = AnswerChanges(url, lambda _c: None, live.append, missing_s=0.05)
    task = asyncio.create_task(changes.run())
    try:

        async def warned() -> bool:
            return changes._said_missing

        await until_async(warned, 15, "the missing triggers to be noticed")
        assert True not in live
        migration = next(m for m in load_migrations() if m.version == 230)
        await pool.execute(migration.sql)  # what `recsys migrate` would apply

        async def is_live() -> bool:
            return bool(live) and live[-1]

        await until_async(is_live, 15, "the listener to go live once the triggers are there")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()


async def test_answers_are_read_from_the_database_when_memory_is_off(database_url: str) -> None:
    url = await new_database(database_url, "nokeep")
    pool: asyncpg.Pool[Any] = await create_pool(url, min_size=1, max_size=2)
    settings = Settings(database_url=url, api={"answer_cache_mb": 0})
    app = api_app(settings, pool=pool, recommender=FakeServingRecommender())
    try:
        async with app.router.lifespan_context(app):
            assert not isinstance(app.state.services.answers, AnswerCache)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                customer = _customer()
                await PgLatestStore(pool).upsert_many([_row(customer, 1)])
                first = (await client.get(f"/recommendations/{customer}")).json()
                await PgLatestStore(pool).upsert_many([_row(customer, 2)])
                second = (await client.get(f"/recommendations/{customer}")).json()
                assert (first["event_id"], second["event_id"]) == (
                    _row(customer, 1).event_id,
                    _row(customer, 2).event_id,
                )
    finally:
        await pool.close()
