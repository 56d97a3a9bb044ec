"""The API's pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``), outermost first:

- :class:`RequestContextMiddleware`: request ids and request metrics. A caller's ``X-Request-ID`` is
  kept when it is a sane token, otherwise one is generated; it is echoed in the response, bound
  into every log line of the request and put in error bodies.
- :class:`BodyGuardMiddleware`: whoever reads the body reads it through a receive() that counts
  the bytes (413 as soon as ``RECSYS_API__MAX_BODY_BYTES`` is passed, and at once when a
  Content-Length says it will be, whether the body comes with a length or chunked) and that holds
  a deadline (408 unless the whole body arrived within ``RECSYS_API__BODY_TIMEOUT_S`` of the
  head). A response sent before the whole body was received closes the connection, so a body
  nobody asked for (a 401, a 413, a route without a body) is never read.
- then ``service.auth.BearerAuthMiddleware``: 401 before anything else, the body unread.

Starlette's own ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) counts the same way but
replaces any response to an over-long request with a plain-text 413, so the error body would not be
the API's documented one.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.logs import bind, get_logger
from service.errors import BodyTooLarge, RequestTimeout
from service.metrics import REQUEST_SECONDS, REQUESTS, UNMATCHED
from service.responses import REQUEST_ID_KEY

__all__ = ["BodyGuardMiddleware", "RequestContextMiddleware"]

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


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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


def _announced_body(scope: Scope) -> tuple[bool, int | None]:
    """Whether the request head says a body follows (HTTP/1.1: Transfer-Encoding, or Content-Length
    above 0), and its Content-Length when it gives one."""
    chunked, length = False, None
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    return chunked or bool(length), length


class BodyGuardMiddleware:
    """A size limit and a deadline on reading the body; no half-read body left on a connection."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced, length = _announced_body(scope)
        received = not announced
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def guarded_receive() -> Message:
            nonlocal received, seen
            if received:
                return await receive()
            if length is not None and length > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)  # said so up front: not a byte is read
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            if message["type"] != "http.request" or not message.get("more_body", False):
                received = True
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not received:
                # the client is still sending a body nobody will read: end the connection with this
                # response rather than read the rest to get to a next request
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, guarded_receive, send_closing)
