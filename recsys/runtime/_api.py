"""The API's object graph: PostgreSQL pool, the model slot and its maintenance, the app, the server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi import FastAPI

from core.errors import ConfigError
from infra.answer_changes import AnswerChanges
from infra.latest import PgStoredAnswers
from recsys import bootstrap
from recsys.settings import Settings
from service.answer_cache import AnswerCache
from service.answers import PRECOMPUTED_DEPTH
from service.app import create_app
from service.config import ServiceConfig
from service.ports import AnswerLookup, ServingRecommender
from service.state import ModelSlot, Opener, Services

__all__ = ["ApiRunning", "api", "api_app", "api_services"]


@contextlib.asynccontextmanager
async def api_services(
    config: ServiceConfig,
    *,
    pool: asyncpg.Pool[Any] | None = None,
    recommender: ServingRecommender | None = None,
    open_model: Opener | None = None,
) -> AsyncIterator[Services]:
    """What the routes use, for the app's lifetime.

    Given a pool and a recommender (``recsys run --api-loop shared`` shares the consumer's), they
    are used and closed by their owner. Without a pool, one is opened on ``config.database_url``;
    without a recommender, the active model version is opened as soon as there is one and refreshed
    periodically (``open_model`` replaces how: tests); both are closed on exit.
    """
    async with contextlib.AsyncExitStack() as stack:
        if pool is None:
            from infra.pg import create_pool

            if config.database_url is None:
                raise ConfigError("the API needs --database-url (or RECSYS_DATABASE_URL)")
            pool = await create_pool(
                config.database_url.get_secret_value(),
                min_size=config.api.pool_min_size,
                max_size=config.api.pool_max_size,
                reset_sessions=False,  # the API's statements set nothing beyond their transaction
            )
            stack.push_async_callback(pool.close)
        slot = ModelSlot(recommender)
        if recommender is None:
            if open_model is None:
                from service.model import open_recommender

                db, ef_search, exclude_bought = pool, config.ef_search, config.exclude_bought

                async def open_active() -> ServingRecommender:
                    return await open_recommender(db, ef_search=ef_search, exclude_bought=exclude_bought)

                open_model = open_active
            task = asyncio.create_task(
                slot.maintain(open_model, config.api.model_retry_s, config.api.model_refresh_s),
                name="api-model-maintenance",
            )

            async def stop_maintenance() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if slot.loaded is not None:
                    await slot.loaded.close()

            stack.push_async_callback(stop_maintenance)
        yield Services(config, pool, await _answers(config, pool, stack), slot)


async def _answers(
    config: ServiceConfig, pool: asyncpg.Pool[Any], stack: contextlib.AsyncExitStack
) -> AnswerLookup:
    """The stored answers' read: kept in memory while the answer-change listener is live, unless
    ``RECSYS_API__ANSWER_CACHE_MB`` is 0 (or no database URL says where to listen)."""
    stored = PgStoredAnswers(pool)
    if config.api.answer_cache_mb == 0 or config.database_url is None:
        return stored
    cache = AnswerCache(
        stored,
        max_bytes=config.api.answer_cache_mb * 1024 * 1024,
        ttl_s=config.api.answer_cache_ttl_s,
        depth=PRECOMPUTED_DEPTH,
    )
    changes = AnswerChanges(config.database_url.get_secret_value(), cache.changed, cache.set_live)
    task = asyncio.create_task(changes.run(), name="api-answer-changes")

    async def stop_listening() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop_listening)
    return cache


def api_app(
    settings: Settings,
    *,
    pool: asyncpg.Pool[Any] | None = None,
    recommender: ServingRecommender | None = None,
    open_model: Opener | None = None,
) -> FastAPI:
    """The FastAPI app of ``settings``, its services built by :func:`api_services` in its lifespan."""
    config = settings.for_api()
    return create_app(
        config, lambda: api_services(config, pool=pool, recommender=recommender, open_model=open_model)
    )


@dataclass
class ApiRunning:
    """An API being served: its URL, its app, and :meth:`wait` (returns once it has drained)."""

    url: str
    app: FastAPI
    serving: asyncio.Task[None]

    async def wait(self) -> None:
        await asyncio.shield(self.serving)


@contextlib.asynccontextmanager
async def api(
    settings: Settings,
    stop: asyncio.Event,
    *,
    pool: asyncpg.Pool[Any] | None = None,
    recommender: ServingRecommender | None = None,
    sock: socket.socket | None = None,
) -> AsyncIterator[ApiRunning]:
    """The HTTP API served on uvicorn in this event loop until ``stop`` is set (or the block exits),
    then drained: ``recsys serve``, the API child of ``recsys run``, and its ``own`` loop.

    Listens on ``sock``, else on the socket inherited from ``recsys run`` (``RECSYS_API__LISTEN_FD``),
    else on ``settings.host:port``; with ``RECSYS_API__PARENT_FD`` it stops when its parent dies.
    Opens its own pool on the settings' database unless given one. Ready (listening) on entry.
    """
    from infra.pg import pool as open_pool
    from service.server import ApiServer, bind_socket, inherited_socket, stop_when_closed

    tuning = settings.api
    async with contextlib.AsyncExitStack() as stack:
        if tuning.parent_fd is not None:  # an API child of `recsys run`: never outlive the parent
            stack.enter_context(stop_when_closed(tuning.parent_fd, stop))
        if pool is None:
            url = bootstrap.database_url(settings)
            pool = await stack.enter_async_context(  # its statements set nothing beyond their transaction
                open_pool(
                    url, min_size=tuning.pool_min_size, max_size=tuning.pool_max_size, reset_sessions=False
                )
            )
        if sock is None:
            if tuning.listen_fd is not None:
                sock = inherited_socket(tuning.listen_fd)
            else:
                sock = bind_socket(settings.host, settings.port)
        app = api_app(settings, pool=pool, recommender=recommender)
        server = ApiServer(app, sock, tuning)
        leaving = asyncio.Event()  # set by ``stop`` or by leaving the block, whichever comes first
        relay = asyncio.create_task(_relay(stop, leaving), name="api-stop-relay")
        serving = asyncio.create_task(server.run(leaving), name="api")
        try:
            await server.wait_ready()
            yield ApiRunning(server.url, app, serving)
        finally:
            leaving.set()
            relay.cancel()
            await asyncio.shield(serving)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
