"""``create_app``: the FastAPI application: routes, error handlers, middleware, and a lifespan that
enters the ``Services`` it is handed.

The app builds nothing: ``recsys.runtime`` (the one wiring place) gives it ``services``, an async
context manager factory that opens the pool and the model (or shares ``recsys run``'s) on startup and
closes what it opened on shutdown.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from infra.logs import get_logger
from service.auth import BearerAuthMiddleware
from service.config import ServiceConfig
from service.errors import install_error_handlers
from service.fast_path import HOT_ROUTE, RecommendationsFastPath
from service.middleware import BodyGuardMiddleware, RequestContextMiddleware
from service.responses import OrjsonResponse
from service.routes import build_routers
from service.state import Services

__all__ = ["ServicesFactory", "create_app"]

log = get_logger(__name__)

ServicesFactory = Callable[[], AbstractAsyncContextManager[Services]]
"""Opens what the routes use for the app's lifetime (``recsys.runtime.api_services``)."""

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


def create_app(config: ServiceConfig, services: ServicesFactory) -> FastAPI:
    """The API; ``services`` is entered by the lifespan (see the module docstring)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services() as built:
            app.state.services = built
            yield

    app = FastAPI(
        title="recsys",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_error_handlers(app)
    routers = build_routers(config)
    for router in routers:
        app.include_router(router)
    # added innermost first: request context -> body guard -> bearer auth -> fast path -> routes
    hot = next(r for router in routers for r in router.routes if getattr(r, "path", None) == HOT_ROUTE)
    app.add_middleware(
        RecommendationsFastPath,
        route=hot,
        default_limit=config.api.default_limit,
        max_limit=config.api.max_limit,
    )
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
