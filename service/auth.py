"""Optional bearer-token auth (``RECSYS_API_TOKEN``), compared in constant time.

When no token is configured every route is open. When one is, every route but the health probes and
``/metrics`` requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

__all__ = ["bearer_guard"]

_scheme = HTTPBearer(auto_error=False, description="the value of RECSYS_API_TOKEN")


def bearer_guard(token: str) -> Callable[..., Awaitable[None]]:
    """A dependency that admits only ``Authorization: Bearer <token>``."""
    expected = token.encode("utf-8")

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)],
    ) -> None:
        if credentials is None:
            raise Unauthorized("this route needs an Authorization: Bearer token", token_given=False)
        given = credentials.credentials.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("the bearer token is not valid", token_given=True)

    return require_token
