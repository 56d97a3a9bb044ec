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
from service.config import ServiceConfig
from service.errors import install_error_handlers
from service.middleware import RequestContextMiddleware
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
When `RECSYS_API_TOKEN` is set, every route but `/healthz`, `/readyz` and `/metrics` needs
`Authorization: Bearer <token>`.
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
    for router in build_routers(config):
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.api.max_body_bytes)
    return app
