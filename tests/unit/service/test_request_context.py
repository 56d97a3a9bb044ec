"""Request ids and error bodies, through the middleware and the handlers (no database)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from core.errors import DatabaseUnavailable, ModelNotReady, NotFoundError, UserError
from service.errors import install_error_handlers
from service.middleware import RequestContextMiddleware


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    failures = {
        "missing": NotFoundError("no such thing"),
        "bad": UserError("wrong shape"),
        "model": ModelNotReady("not yet"),
        "db": DatabaseUnavailable("down"),
    }

    @app.get("/fail/{what}")
    async def fail(what: str) -> None:
        raise failures[what]

    return app


async def _get(path: str, **headers: str | bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


async def test_errors_map_to_statuses_with_reason_and_request_id() -> None:
    expected = {"missing": (404, "not_found"), "bad": (422, "invalid_request"),
                "model": (503, "model_not_ready"), "db": (503, "unavailable")}  # fmt: skip
    for what, (status, code) in expected.items():
        resp = await _get(f"/fail/{what}", **{"X-Request-ID": f"id-{what}"})
        assert resp.status_code == status
        assert resp.json()["error"] == code
        assert resp.json()["request_id"] == f"id-{what}" == resp.headers["x-request-id"]
        assert resp.json()["reason"]
    assert (await _get("/fail/db")).headers["retry-after"]


async def test_unsafe_request_ids_are_replaced() -> None:
    for bad in (b"x" * 200, b"a b", "é".encode()):
        resp = await _get("/fail/missing", **{"X-Request-ID": bad})
        assert resp.headers["x-request-id"].encode() != bad
        assert len(resp.headers["x-request-id"]) == 32
