"""``GET /recommendations/{customer_number}`` answered in pure ASGI, past FastAPI's per-request work.

The route is the API's hot path; per request, FastAPI's routing, dependency resolution and
parameter validation cost about as much as the answer itself (``python -m bench api_profile``). This
middleware (the innermost of ours: request context, body guard and auth have run) answers the
requests whose parameters need no validation to be understood -- ``GET``, a customer number and an
optional ``limit`` written as plain decimals in range, no other query parameter -- with the same
``service.answers.answer_for`` and the same body, headers and metrics as the route. Everything else
(a ``limit=+5``, a negative or huge number, any other parameter, any error of the answer) goes to
the FastAPI route, which answers exactly as it would without this: the route stays the one
definition of the operation, its validation and its OpenAPI document.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import RecsysError
from service.answers import answer_for
from service.metrics import RECOMMENDATIONS

__all__ = ["HOT_ROUTE", "RecommendationsFastPath", "plain_request"]

HOT_ROUTE = "/recommendations/{customer_number}"
PREFIX = "/recommendations/"
INT32_MAX = 2**31 - 1
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,9})")
_JSON = (b"content-type", b"application/json")


def _number(text: str | bytes, high: int) -> int | None:
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= high else None


def plain_request(scope: Scope, default_limit: int, max_limit: int) -> tuple[int, int] | None:
    """(customer number, limit) of a request the fast path answers, else None (the route's)."""
    path: str = scope.get("path", "")
    if scope["type"] != "http" or scope.get("method") != "GET" or not path.startswith(PREFIX):
        return None
    customer = _number(path[len(PREFIX) :], INT32_MAX)
    if customer is None:
        return None
    query: bytes = scope.get("query_string", b"")
    if not query:
        return customer, default_limit
    name, sep, value = query.partition(b"=")
    if name != b"limit" or not sep:
        return None
    limit = _number(value, max_limit)
    if limit is None or limit < 1:
        return None
    return customer, limit


class RecommendationsFastPath:
    """Pure ASGI: the plain requests of ``GET /recommendations/{customer_number}`` (module docstring)."""

    def __init__(self, app: ASGIApp, *, route: Any, default_limit: int, max_limit: int) -> None:
        self.app = app
        self.route = route  # the FastAPI route: its template labels the request metrics
        self.default_limit = default_limit
        self.max_limit = max_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = plain_request(scope, self.default_limit, self.max_limit)
        if plain is None:
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        try:
            answer = await answer_for(
                plain[0],
                plain[1],
                services.answers,
                services.model,
                precomputed=services.config.exclude_bought,
            )
        except RecsysError:  # the route answers it as it answers every error (503, ...)
            await self.app(scope, receive, send)
            return
        body = answer.body()
        scope["route"] = self.route
        RECOMMENDATIONS.labels(answer.source.value).inc()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON],
            }
        )
        await send({"type": "http.response.body", "body": body})
