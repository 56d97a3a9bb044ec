"""Request ids and request metrics, as one pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``).

A caller's ``X-Request-ID`` is kept when it is a sane token, otherwise one is generated; it is echoed
in the response, bound into every log line of the request and put in error bodies.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.logs import bind, get_logger
from service.metrics import REQUEST_SECONDS, REQUESTS, UNMATCHED
from service.responses import REQUEST_ID_KEY

__all__ = ["RequestContextMiddleware"]

log = get_logger("service.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            try:
                given: str = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                break
            if _SANE_ID.match(given):
                return given
            break
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = 1_048_576) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope[REQUEST_ID_KEY] = request_id
        header = (b"x-request-id", request_id.encode("ascii"))
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            with bind(request_id=request_id):
                length = _content_length(scope)
                if length is not None and length > self.max_body_bytes:
                    await _too_large(request_id, self.max_body_bytes, send_with_id)
                else:
                    await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            labels = (template, scope.get("method", ""), str(status))
            REQUESTS.labels(*labels).inc()
            REQUEST_SECONDS.labels(*labels).observe(elapsed)
            if log.isEnabledFor(10):  # DEBUG: one access line per request
                log.debug(
                    "%s %s %d %.1f ms",
                    scope.get("method"),
                    template,
                    status,
                    elapsed * 1000,
                    extra={"fields": {"request_id": request_id}},
                )


async def _too_large(request_id: str, limit: int, send: Send) -> None:
    body = orjson.dumps(
        {"error": "too_large", "reason": f"the body is larger than {limit} bytes", "request_id": request_id}
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
