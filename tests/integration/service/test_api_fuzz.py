"""A schema-driven fuzz of the API: requests generated from our own OpenAPI document (valid and
invalid values alike), sent over HTTP to the real app on uvicorn and PostgreSQL. Every answer must
be a non-5xx status the document declares for the operation, with a body that matches its schema."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.runtime import api_app
from recsys.settings import Settings
from service.server import ApiServer, bind_socket

from .conftest import ITEMS, KNOWN_CUSTOMERS, FakeRecommender

# statuses any request may get whatever the operation: routing outcomes
GENERIC = {"404", "405"}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(), st.text(max_size=30)
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def live_api(database_url: str) -> Iterator[str]:
    """The app on a real uvicorn at 127.0.0.1:<free port>, in its own thread and event loop; the
    app opens its own pool (the path `recsys serve` takes without a shared pool)."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    url: list[str] = []
    failure: list[BaseException] = []

    async def main() -> None:
        app = api_app(Settings(database_url=database_url), recommender=FakeRecommender())
        server = ApiServer(app, bind_socket("127.0.0.1", 0))
        url.append(server.url)
        task = asyncio.create_task(server.run(stop))
        try:
            await server.wait_ready()
        finally:
            started.set()
        await task

    def target() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="live-api", daemon=True)
    thread.start()
    assert started.wait(60), "the API did not start"
    assert not failure, failure
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive()
        assert not failure, failure


@pytest.fixture(scope="module")
def openapi(live_api: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{live_api}/openapi.json", timeout=10).json()
    return doc


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def from_schema(doc: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of ``schema`` near and past its bounds, mixed with arbitrary JSON."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        return st.one_of([from_schema(doc, s, depth) for s in schema["anyOf"]])
    kind = schema.get("type")
    strategy: st.SearchStrategy[Any]
    if kind == "integer":
        lo, hi = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
        strategy = st.integers(lo, hi) | st.sampled_from([lo - 1, hi + 1, 0, *KNOWN_CUSTOMERS])
    elif kind == "number":
        strategy = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)
    elif kind == "string":
        strategy = st.text(min_size=0, max_size=int(schema.get("maxLength", 40)) + 2) | st.sampled_from(ITEMS)
    elif kind == "null":
        strategy = st.none()
    elif kind == "array" and depth < 3:
        items = from_schema(doc, schema.get("items", {}), depth + 1)
        strategy = st.lists(items, min_size=0, max_size=40)
    elif kind == "object" and depth < 3:
        props = {k: from_schema(doc, v, depth + 1) for k, v in schema.get("properties", {}).items()}
        strategy = st.fixed_dictionaries({}, optional=props)
    else:
        strategy = any_json
    return strategy | any_json if depth == 0 else strategy


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def _response_schema(doc: dict[str, Any], op: dict[str, Any], status: str) -> dict[str, Any] | None:
    content = op["responses"].get(status, {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    return {**schema, "components": doc["components"]}


def _check_answer(doc: dict[str, Any], op: dict[str, Any], resp: httpx.Response) -> None:
    status = str(resp.status_code)
    assert resp.status_code < 500, resp.text
    assert status in op["responses"] or status in GENERIC, f"undeclared {status}: {resp.text[:300]}"
    if status in GENERIC and status not in op["responses"]:
        schema: dict[str, Any] | None = {
            "$ref": "#/components/schemas/ErrorBody",
            "components": doc["components"],
        }
    else:
        schema = _response_schema(doc, op, status)
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(resp.json())


def test_every_operation_is_documented(openapi: dict[str, Any]) -> None:
    ops = {(path, method) for path, method, _ in _operations(openapi)}
    assert {
        ("/recommendations/{customer_number}", "get"),
        ("/user_embeddings", "post"),
        ("/items_from_user", "post"),
        ("/items_from_item", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    } <= ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_no_5xx_and_answers_match_the_schema(
    live_api: str, openapi: dict[str, Any], data: st.DataObject
) -> None:
    path, method, op = data.draw(st.sampled_from(_operations(openapi)), label="operation")
    url = path
    query: dict[str, Any] = {}
    for param in op.get("parameters", []):
        value = data.draw(from_schema(openapi, param.get("schema", {})), label=param["name"])
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", quote(str(value), safe="") or "x")
        elif (
            param["in"] == "query"
            and (param.get("required") or data.draw(st.booleans()))
            and value is not None
            and not isinstance(value, dict | list)
        ):
            query[param["name"]] = str(value)
    content: bytes | None = None
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        body = data.draw(from_schema(openapi, schema), label="body")
        content = json.dumps(body).encode()  # NaN and Infinity go out as JSON extensions on purpose
    resp = httpx.request(
        method.upper(),
        live_api + url,
        params=query,
        content=content,
        headers={"content-type": "application/json"} if content is not None else {},
        timeout=10,
    )
    _check_answer(openapi, op, resp)
