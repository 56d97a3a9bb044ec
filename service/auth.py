"""Optional bearer-token auth (``RECSYS_API_TOKEN``), checked first, compared in constant time.

When no token is configured every route is open. When one is, :class:`BearerAuthMiddleware` answers
401 to any request without ``Authorization: Bearer <token>`` before anything else happens: before
the body is read (not a byte of it is asked for), before routing, parameters and validation. It
denies by default: every path is protected but the health probes, ``/metrics`` and the OpenAPI
document (``/docs``, ``/openapi.json``), so a route added later is protected without anyone
remembering to.

:data:`bearer_scheme` only declares the scheme in the OpenAPI document (a dependency of the
protected routes that reads nothing and refuses nothing); the middleware is what enforces it.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import send_unauthorized

__all__ = ["BearerAuthMiddleware", "bearer_scheme"]

bearer_scheme = HTTPBearer(auto_error=False, description="the value of RECSYS_API_TOKEN")


def _bearer_token(scope: Scope) -> bytes | None:
    """The credentials of an ``Authorization: Bearer ...`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = bytes(value).strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            return credentials.strip()
    return None


class BearerAuthMiddleware:
    """Pure ASGI: 401 unless the request carries the token, on every path but ``open_paths``."""

    def __init__(self, app: ASGIApp, token: str, open_paths: Collection[str]) -> None:
        if not token:
            raise ValueError("an empty token would let everyone in")
        self.app = app
        self._expected = token.encode("utf-8")
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self._open:
            await self.app(scope, receive, send)
            return
        given = _bearer_token(scope)
        if given is None:
            await send_unauthorized(scope, send, token_given=False)
        elif not hmac.compare_digest(given, self._expected):
            await send_unauthorized(scope, send, token_given=True)
        else:
            await self.app(scope, receive, send)
