"""The HTTP routes. Built per app from the settings, so limits and auth in the OpenAPI document are
the ones the server enforces.

Every status an operation can answer is declared on it with its body model; what no operation
declares is routing (404 for an unknown path, 405 for a known path with another method, both with
:class:`~service.schemas.ErrorBody`) and the HTTP server's own refusals, both plain text (see
docs/api.md): 400 for what is not HTTP or a head unfinished after 16 KiB, and 503 past
``RECSYS_API__MAX_CONNECTIONS``.
"""

# no `from __future__ import annotations`: FastAPI reads the local `Limit` alias at definition time

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Security
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from core.events import UserFeatures
from infra.logs import get_logger
from service.answers import answer_for
from service.auth import bearer_scheme
from service.config import ServiceConfig
from service.errors import responses_for
from service.metrics import RECOMMENDATIONS, exposition, set_model_version
from service.responses import OrjsonResponse
from service.schemas import (
    Embedding,
    Health,
    Item,
    ItemId,
    Readiness,
    RecommendationsOut,
    UserFeaturesIn,
    Vector,
)
from service.state import Services

__all__ = ["StrictJsonRoute", "build_routers"]

INT32_MAX = 2**31 - 1
log = get_logger(__name__)


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson refuses what the standard library lets through or fails on with an error FastAPI
            # reports as an undocumented 400: invalid UTF-8, lone surrogates, NaN/Infinity, numbers that
            # overflow a double, more than 1024 levels of nesting. Its JSONDecodeError subclasses the
            # standard one, which FastAPI answers with a 422 (`json_invalid`).
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An operation whose JSON body is parsed strictly (see ``_StrictJsonRequest``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict_json


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def build_routers(config: ServiceConfig) -> list[APIRouter]:
    api = config.api
    token = config.api_token.get_secret_value() if config.api_token is not None else None
    # declares the scheme in the OpenAPI document; service.auth.BearerAuthMiddleware enforces it
    guarded = [Security(bearer_scheme)] if token else []
    auth_errors = (401,) if token else ()
    Limit = Annotated[
        int,
        Query(ge=1, le=api.max_limit, description=f"how many items (1..{api.max_limit})"),
    ]

    data = APIRouter(dependencies=guarded, route_class=StrictJsonRoute)
    probes = APIRouter(tags=["operations"])

    @data.get(
        "/recommendations/{customer_number}",
        response_model=RecommendationsOut,
        responses=responses_for(*auth_errors, 422, 503),
        tags=["recommendations"],
        summary="the customer's latest recommendations",
    )
    async def recommendations(
        services: ServicesDep,
        customer_number: Annotated[int, Path(ge=0, le=INT32_MAX, description="the shop's customer number")],
        limit: Limit = api.default_limit,
    ) -> Response:
        """What the stream computed from the customer's latest browsing event with the current model
        version (`source=stream`; an answer of another version is never served as current); else
        the current version's own answer for a customer it knows (`source=model`); for a customer
        the model does not know, the most popular items (`source=popular`)."""
        answer = await answer_for(
            customer_number,
            limit,
            services.answers,
            services.model,
            precomputed=services.config.exclude_bought,
        )
        RECOMMENDATIONS.labels(answer.source.value).inc()
        return Response(answer.body(), media_type="application/json")

    @data.post(
        "/user_embeddings",
        response_model=list[Embedding],
        responses=responses_for(*auth_errors, 408, 413, 422, 503),
        tags=["lab inference"],
        summary="user-tower embeddings of customer profiles",
    )
    async def user_embeddings(
        services: ServicesDep,
        profiles: Annotated[list[UserFeaturesIn], Body(max_length=api.max_embedding_batch)],
    ) -> Response:
        """One embedding per profile, in order (the lab's `user_embeddings`): an empty list gives an
        empty list; at most `RECSYS_API__MAX_EMBEDDING_BATCH` profiles."""
        features = [UserFeatures(p.city, p.country, p.creditlimit) for p in profiles]
        vectors = await services.model.get().user_embeddings(features) if features else []
        return OrjsonResponse(vectors)

    @data.post(
        "/items_from_user",
        response_model=list[Item],
        responses=responses_for(*auth_errors, 408, 413, 422, 503),
        tags=["lab inference"],
        summary="the items nearest to a user embedding",
    )
    async def items_from_user(
        services: ServicesDep, vector: Annotated[Vector, Body()], limit: Limit = api.default_limit
    ) -> Response:
        """The `limit` items nearest to the given user embedding's direction (the lab's
        `items_from_user`)."""
        items = await services.model.get().items_from_vector(vector, limit)
        return OrjsonResponse([item.to_json() for item in items[:limit]])

    @data.get(
        "/items_from_item",
        response_model=list[Item],
        responses=responses_for(*auth_errors, 404, 422, 503),
        tags=["lab inference"],
        summary="the items most similar to an item",
    )
    async def items_from_item(
        services: ServicesDep,
        item_id: Annotated[ItemId, Query()],
        limit: Limit = api.default_limit,
    ) -> Response:
        """The `limit` items nearest to `item_id` (the lab's `items_from_item`); 404 for an unknown item."""
        items = await services.model.get().similar_items(item_id, limit)  # NotFoundError: 404
        return OrjsonResponse([item.to_json() for item in items[:limit]])

    @probes.get("/healthz", response_model=Health, summary="the process is alive")
    async def healthz() -> Response:
        return OrjsonResponse({"status": "ok"})

    @probes.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready; `checks` say why"}},
        summary="the database answers and a model is loaded",
    )
    async def readyz(services: ServicesDep) -> Response:
        checks: dict[str, dict[str, Any]] = {}
        try:
            await asyncio.wait_for(services.pool.fetchval("SELECT 1"), api.ready_timeout_s)
            checks["database"] = {"ok": True, "reason": None}
        except TimeoutError:
            log.warning("readiness: the database did not answer within %g s", api.ready_timeout_s)
            reason = f"the database did not answer within {api.ready_timeout_s:g} s"
            checks["database"] = {"ok": False, "reason": reason}
        except Exception as exc:  # noqa: BLE001  (a probe reports any failure, it never raises)
            # the probe is open to anyone: where the database is and what the driver said go to the log
            log.warning("readiness: the database is not reachable: %r", exc)
            checks["database"] = {"ok": False, "reason": "the database is not reachable (the log says why)"}
        loaded = services.model.loaded
        version = loaded.model_version if loaded is not None else None
        checks["model"] = {"ok": loaded is not None, "reason": None if loaded else services.model.reason}
        ready = all(c["ok"] for c in checks.values())
        body = {"status": "ready" if ready else "not_ready", "model_version": version, "checks": checks}
        return OrjsonResponse(body, status_code=200 if ready else 503)

    @probes.get(
        "/metrics",
        summary="Prometheus metrics (text format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "metrics"}},
    )
    async def metrics(services: ServicesDep) -> Response:
        loaded = services.model.loaded
        set_model_version(loaded.model_version if loaded is not None else None)
        api = services.config.api
        body = await exposition(api.consumer_metrics_url, api.consumer_metrics_timeout_s)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [data, probes]
