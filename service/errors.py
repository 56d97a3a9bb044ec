"""The only place where errors become HTTP statuses.

::

    RequestValidationError          422 invalid_request (every field problem listed)
    Unauthorized (this module)      401 unauthorized, with WWW-Authenticate: Bearer
    NotFoundError                   404 not_found
    UserError (other)               422 invalid_request
    ModelNotReady                   503 model_not_ready, Retry-After
    InfraError                      503 unavailable, Retry-After
    HTTPException (routing)         its status (404 unknown path, 405 wrong method)
    anything else                   500 internal_error (logged with the request id)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import InfraError, ModelNotReady, NotFoundError, UserError
from infra.logs import get_logger
from service.responses import REQUEST_ID_KEY, OrjsonResponse

__all__ = ["Unauthorized", "error_response", "install_error_handlers", "responses_for"]

log = get_logger(__name__)
_RETRY_AFTER_S = "5"


class Unauthorized(Exception):
    """A protected route was called without the right bearer token."""

    def __init__(self, reason: str, *, token_given: bool) -> None:
        super().__init__(reason)
        self.token_given = token_given


def error_response(
    request: Request | None,
    status: int,
    error: str,
    reason: str,
    *,
    detail: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    request_id = request.scope.get(REQUEST_ID_KEY) if request is not None else None
    body: dict[str, Any] = {"error": error, "reason": reason, "request_id": request_id}
    if detail is not None:
        body["detail"] = detail
    return OrjsonResponse(body, status_code=status, headers=headers)


def _field(loc: Any) -> str:
    """``query.limit``, ``path.customer_number``, ``body``, ``body.0.city``."""
    return ".".join(str(p) for p in loc) or "request"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    reason = "; ".join(f"{_field(d['loc'])}: {d['msg']}" for d in detail[:5]) or "invalid request"
    return error_response(request, 422, "invalid_request", reason, detail=detail)


async def _unauthorized(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthorized)
    challenge = 'Bearer realm="recsys"'
    if exc.token_given:
        challenge += ', error="invalid_token"'
    return error_response(request, 401, "unauthorized", str(exc), headers={"WWW-Authenticate": challenge})


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(request, 404, "not_found", str(exc))


async def _user_error(request: Request, exc: Exception) -> Response:
    return error_response(request, 422, "invalid_request", str(exc))


async def _model_not_ready(request: Request, exc: Exception) -> Response:
    reason = str(exc) or "no model is loaded yet"
    return error_response(request, 503, "model_not_ready", reason, headers={"Retry-After": _RETRY_AFTER_S})


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable: %s", exc)
    return error_response(request, 503, "unavailable", str(exc), headers={"Retry-After": _RETRY_AFTER_S})


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        request,
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return error_response(request, 500, "internal_error", "internal error; see the logs with this request id")


def install_error_handlers(app: FastAPI) -> None:
    # order does not matter: Starlette picks the handler of the nearest class in the MRO
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(ModelNotReady, _model_not_ready)
    app.add_exception_handler(InfraError, _unavailable)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)


_DESCRIPTIONS = {
    401: "missing or wrong bearer token",
    404: "unknown item",
    413: "the body is larger than RECSYS_API__MAX_BODY_BYTES",
    422: "invalid input; `reason` says what to change",
    503: "the database or the model is not available yet; retry after `Retry-After` seconds",
}


def responses_for(*statuses: int, **overrides: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route really returns."""
    from service.schemas import ErrorBody

    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = overrides.get(f"d{status}", _DESCRIPTIONS[status])
        out[status] = {"model": ErrorBody, "description": description}
    return out
