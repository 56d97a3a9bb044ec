"""``create_app``: the FastAPI application, its lifespan and middleware (the service's wiring place).

Given a pool and a recommender (``recsys run`` shares its own with the consumer), the app uses them
and closes neither. Given only settings (``recsys serve``), it opens the pool in its lifespan and the
model as soon as one is active, and closes both on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI

from core.errors import ConfigError
from infra.latest import PgLatestStore
from infra.logs import get_logger
from infra.pg import create_pool
from service.auth import BearerAuthMiddleware
from service.config import ServiceConfig
from service.errors import install_error_handlers
from service.middleware import BodyGuardMiddleware, RequestContextMiddleware
from service.ports import ServingRecommender
from service.responses import OrjsonResponse
from service.routes import build_routers
from service.state import ModelSlot, Opener, Services

__all__ = ["create_app"]

log = get_logger(__name__)

DESCRIPTION = """Product recommendations while people browse.

`GET /recommendations/{customer_number}` answers from the stream (what the consumer computed from the
customer's latest browsing event), else from the model, else with popular items. The lab's inference
endpoints are here as drop-in replacements. Errors have a body `{error, reason, request_id}`.
When `RECSYS_API_TOKEN` is set, every route but `/healthz`, `/readyz`, `/metrics` and this document
needs `Authorization: Bearer <token>`, checked before anything else (401). Request bodies: at most
`RECSYS_API__MAX_BODY_BYTES` (413), received within `RECSYS_API__BODY_TIMEOUT_S` (408). The HTTP
server itself answers 400 (plain text) to a request that is not HTTP or a head unfinished after 16 KiB,
and 503 (plain text) once `RECSYS_API__MAX_CONNECTIONS` connections are open.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("recsys")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _default_opener(pool: asyncpg.Pool[Any], ef_search: int) -> Opener:
    async def open_model() -> ServingRecommender:
        from service.model import open_recommender

        return await open_recommender(pool, ef_search=ef_search)

    return open_model


def create_app(
    config: ServiceConfig,
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
                if config.database_url is None:
                    raise ConfigError("the API needs --database-url (or RECSYS_DATABASE_URL)")
                the_pool = await create_pool(
                    config.database_url.get_secret_value(),
                    min_size=config.api.pool_min_size,
                    max_size=config.api.pool_max_size,
                )
                stack.push_async_callback(the_pool.close)
            slot = ModelSlot(recommender)
            if recommender is None:
                opener = open_model or _default_opener(the_pool, config.ef_search)
                task = asyncio.create_task(
                    slot.maintain(opener, config.api.model_retry_s, config.api.model_refresh_s),
                    name="api-model-maintenance",
                )

                async def stop_maintenance() -> None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    if slot.loaded is not None:
                        await slot.loaded.close()

                stack.push_async_callback(stop_maintenance)
            app.state.services = Services(config, the_pool, PgLatestStore(the_pool), slot)
            yield

    app = FastAPI(
        title="recsys",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_error_handlers(app)
    for router in build_routers(config):
        app.include_router(router)
    # added innermost first: request context -> body guard -> bearer auth -> routes
    if config.api_token is not None:
        open_paths = {"/healthz", "/readyz", "/metrics", app.openapi_url, app.docs_url, app.redoc_url}
        open_paths.add(app.swagger_ui_oauth2_redirect_url)
        app.add_middleware(
            BearerAuthMiddleware,
            token=config.api_token.get_secret_value(),
            open_paths={p for p in open_paths if p},
        )
    app.add_middleware(
        BodyGuardMiddleware,
        max_body_bytes=config.api.max_body_bytes,
        body_timeout_s=config.api.body_timeout_s,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
