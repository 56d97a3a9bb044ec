"""``create_app``: the FastAPI application, its lifespan and middleware (the service's wiring place).

Given a pool and a recommender (``recsys run`` shares its own with the consumer), the app uses them
and closes neither. Given only settings (``recsys serve``), it opens the pool in its lifespan and the
model as soon as one is active, and closes both on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI

from recsys import __version__
from recsys.core.errors import ConfigError
from recsys.infra.latest import PgLatestStore
from recsys.infra.logs import get_logger
from recsys.infra.pg import create_pool
from recsys.service.errors import install_error_handlers
from recsys.service.middleware import RequestContextMiddleware
from recsys.service.ports import ServingRecommender
from recsys.service.responses import OrjsonResponse
from recsys.service.routes import build_routers
from recsys.service.state import ModelSlot, Opener, Services
from recsys.settings import Settings

__all__ = ["create_app"]

log = get_logger(__name__)

DESCRIPTION = """Product recommendations while people browse.

`GET /recommendations/{customer_number}` answers from the stream (what the consumer computed from the
customer's latest browsing event), else from the model, else with popular items. The lab's inference
endpoints are here as drop-in replacements. Errors have a body `{error, reason, request_id}`.
When `RECSYS_API_TOKEN` is set, every route but `/healthz`, `/readyz` and `/metrics` needs
`Authorization: Bearer <token>`.
"""


def _default_opener(pool: asyncpg.Pool[Any], ef_search: int) -> Opener:
    async def open_model() -> ServingRecommender:
        from recsys.service.model import open_recommender

        return await open_recommender(pool, ef_search=ef_search)

    return open_model


def create_app(
    settings: Settings,
    *,
    pool: asyncpg.Pool[Any] | None = None,
    recommender: ServingRecommender | None = None,
    open_model: Opener | None = None,
) -> FastAPI:
    """The API. ``open_model`` (tests) replaces how an app without a recommender opens one."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            the_pool = pool
            if the_pool is None:
                if settings.database_url is None:
                    raise ConfigError("the API needs --database-url (or RECSYS_DATABASE_URL)")
                the_pool = await create_pool(
                    settings.database_url.get_secret_value(),
                    min_size=settings.api.pool_min_size,
                    max_size=settings.api.pool_max_size,
                )
                stack.push_async_callback(the_pool.close)
            slot = ModelSlot(recommender)
            if recommender is None:
                opener = open_model or _default_opener(the_pool, settings.ef_search)
                task = asyncio.create_task(
                    slot.maintain(opener, settings.api.model_retry_s, settings.api.model_refresh_s),
                    name="api-model-maintenance",
                )

                async def stop_maintenance() -> None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    if slot.loaded is not None:
                        await slot.loaded.close()

                stack.push_async_callback(stop_maintenance)
            app.state.services = Services(settings, the_pool, PgLatestStore(the_pool), slot)
            yield

    app = FastAPI(
        title="recsys",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_error_handlers(app)
    for router in build_routers(settings):
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.api.max_body_bytes)
    return app
