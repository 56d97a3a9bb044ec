"""The only place where errors become HTTP statuses.

::

    a missing or wrong token        401 unauthorized, WWW-Authenticate: Bearer (service.auth, first)
    RequestValidationError          422 invalid_request (every field problem listed; malformed JSON too)
    NotFoundError                   404 not_found
    UserError (other)               422 invalid_request
    ModelNotReady                   503 model_not_ready, Retry-After
    InfraError, ConfigError         503 unavailable, Retry-After (the cause goes to the log, not the client)
    HTTPException                   its status: 404 unknown path, 405 wrong method, 408 request_timeout
                                    (body not received in time), 413 too_large (body over the limit)
    anything else                   500 internal_error (logged with the request id)

Bodies are ``{"error", "reason", "request_id"}`` (:class:`service.schemas.ErrorBody`). A reason says
what the client can change; hosts, ports, URLs and driver messages stay in the server's log.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from core.errors import ConfigError, DatabaseUnavailable, InfraError, ModelNotReady, NotFoundError, UserError
from infra.logs import get_logger
from service.responses import REQUEST_ID_KEY, OrjsonResponse

__all__ = [
    "RETRY_AFTER_S",
    "BodyTooLarge",
    "RequestTimeout",
    "error_response",
    "install_error_handlers",
    "responses_for",
    "send_error",
    "send_unauthorized",
]

log = get_logger(__name__)
RETRY_AFTER_S = "5"


class RequestTimeout(StarletteHTTPException):
    """The request body did not arrive within ``RECSYS_API__BODY_TIMEOUT_S``."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s")


class BodyTooLarge(StarletteHTTPException):
    """The request body is larger than ``RECSYS_API__MAX_BODY_BYTES``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes (RECSYS_API__MAX_BODY_BYTES)")


def _body(
    scope: Scope | None, error: str, reason: str, detail: list[dict[str, Any]] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": error,
        "reason": reason,
        "request_id": scope.get(REQUEST_ID_KEY) if scope is not None else None,
    }
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(
    request: Request | None,
    status: int,
    error: str,
    reason: str,
    *,
    detail: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    scope = request.scope if request is not None else None
    return OrjsonResponse(_body(scope, error, reason, detail), status_code=status, headers=headers)


async def send_error(
    scope: Scope, send: Send, status: int, error: str, reason: str, *, headers: dict[str, str] | None = None
) -> None:
    """The same error body, sent by an ASGI middleware (no request object, no exception handler)."""
    response = OrjsonResponse(_body(scope, error, reason, None), status_code=status, headers=headers)

    async def no_body() -> dict[str, Any]:  # pragma: no cover - a response never reads the request
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


async def send_unauthorized(scope: Scope, send: Send, *, token_given: bool) -> None:
    """401 with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750: ``invalid_token`` when one was given)."""
    challenge = 'Bearer realm="recsys"'
    if token_given:
        challenge += ', error="invalid_token"'
        reason = "the bearer token is not valid"
    else:
        reason = "this route needs an Authorization: Bearer token"
    await send_error(scope, send, 401, "unauthorized", reason, headers={"WWW-Authenticate": challenge})


def _field(loc: Any) -> str:
    """``query.limit``, ``path.customer_number``, ``body``, ``body.0.city``."""
    return ".".join(str(p) for p in loc) or "request"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for err in exc.errors():
        item = {
            "loc": list(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        if err.get("type") == "json_invalid" and isinstance(err.get("ctx"), dict):
            item["msg"] = f"{item['msg']}: {err['ctx'].get('error', '')}"  # what the parser refused
        detail.append(item)
    reason = "; ".join(f"{_field(d['loc'])}: {d['msg']}" for d in detail[:5]) or "invalid request"
    return error_response(request, 422, "invalid_request", reason, detail=detail)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(request, 404, "not_found", str(exc))


async def _user_error(request: Request, exc: Exception) -> Response:
    return error_response(request, 422, "invalid_request", str(exc))


async def _model_not_ready(request: Request, exc: Exception) -> Response:
    reason = str(exc) or "no model is loaded yet"
    return error_response(request, 503, "model_not_ready", reason, headers={"Retry-After": RETRY_AFTER_S})


def _outage_reason(exc: BaseException) -> str:
    """What a client is told about an outage: which kind of dependency, never where it is."""
    if isinstance(exc, DatabaseUnavailable):
        return "the database is not available; retry later"
    return "a dependency of the service is not available; retry later"


async def _unavailable(request: Request, exc: Exception) -> Response:
    # the cause (host, port, driver message; URLs are redacted where the error was made) is for
    # operators: it goes to the log, bound to the request id the client sees
    if isinstance(exc, ConfigError):
        log.error("the API is misconfigured: %s", exc)
    else:
        log.warning("dependency unavailable: %s", exc)
    return error_response(
        request, 503, "unavailable", _outage_reason(exc), headers={"Retry-After": RETRY_AFTER_S}
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "too_large"}


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    reason = str(exc.detail)
    headers = dict(exc.headers or {})
    return error_response(
        request, exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), reason, headers=headers
    )


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return error_response(request, 500, "internal_error", "internal error; see the logs with this request id")


def install_error_handlers(app: FastAPI) -> None:
    # order does not matter: Starlette picks the handler of the nearest class in the MRO
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(ConfigError, _unavailable)  # the server's settings, not the client's input
    app.add_exception_handler(ModelNotReady, _model_not_ready)
    app.add_exception_handler(InfraError, _unavailable)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)


_DESCRIPTIONS = {
    401: "missing or wrong bearer token (answered before the request is looked at any further)",
    404: "unknown item",
    408: "the request body did not arrive within RECSYS_API__BODY_TIMEOUT_S; the connection is closed",
    413: "the body is larger than RECSYS_API__MAX_BODY_BYTES; the connection is closed",
    422: "invalid input; `reason` says what to change, `detail` lists every problem",
    503: "no model is loaded yet (`model_not_ready`) or the database is not available (`unavailable`); "
    "retry after `Retry-After` seconds",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    408: {"Connection": {"description": "`close`", "schema": {"type": "string"}}},
    413: {"Connection": {"description": "`close`", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
}


def responses_for(*statuses: int, **overrides: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route really returns."""
    from service.schemas import ErrorBody

    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = overrides.get(f"d{status}", _DESCRIPTIONS[status])
        out[status] = {"model": ErrorBody, "description": description}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out
