"""The API over HTTP: the real app and PostgreSQL, a deterministic fake model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.errors import ModelNotReady
from core.recommendations import Recommendation, ScoredItem, SimilarItems
from infra.latest import LatestRow, PgLatestStore
from recsys.runtime import api_app
from recsys.settings import Settings

from .conftest import DIM, ITEMS, KNOWN_CUSTOMER, UNKNOWN_CUSTOMER, AppClient, FakeRecommender

pytestmark = pytest.mark.asyncio


def _customer() -> int:
    """A customer number no other test uses (the table is shared by the session)."""
    return 1_000_000_000 + uuid.uuid4().int % 900_000_000


async def _store_latest(pool: asyncpg.Pool[Any], customer: int, n: int = 12) -> LatestRow:
    row = LatestRow(
        customer_number=customer,
        recommendation=Recommendation(
            recommended_items=tuple(ScoredItem(f"S18_{2000 + i}", 0.9 - i / 100) for i in range(n)),
            similar_items=SimilarItems(
                "S10_1678", tuple(ScoredItem(f"S24_{3000 + i}", 0.8 - i / 100) for i in range(n))
            ),
            model_version="fake-v1",  # the fake model's: an answer of another version is stale
        ),
        event_id=f"shardId-000000000000:{customer}",
        event_time=datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        computed_at=datetime(2026, 11, 1, 12, 0, 1, tzinfo=UTC),
    )
    await PgLatestStore(pool).upsert_many([row])
    return row


# ---------------------------------------------------------------- the three paths


async def test_stream_path_answers_what_the_consumer_stored(api_client: AppClient, api_pool: Any) -> None:
    customer = _customer()
    row = await _store_latest(api_pool, customer)
    async with api_client() as client:
        resp = await client.get(f"/recommendations/{customer}", params={"limit": 5})
    assert resp.status_code == 200
    body = resp.json()
    assert body["source"] == "stream"
    assert body["customer_number"] == customer
    assert body["model_version"] == "fake-v1"
    assert body["event_id"] == row.event_id
    assert datetime.fromisoformat(body["computed_at"]) == row.computed_at
    assert [i["id"] for i in body["recommended_items"]] == [f"S18_{2000 + i}" for i in range(5)]
    assert body["similar_items"]["product_code"] == "S10_1678"
    assert len(body["similar_items"]["similar_items"]) == 5
    assert resp.headers["content-type"] == "application/json"


async def test_stream_path_needs_no_model(api_client: AppClient, api_pool: Any) -> None:
    customer = _customer()
    await _store_latest(api_pool, customer)

    async def no_model() -> Any:
        raise ModelNotReady("no active model version")

    async with api_client(recommender=None, open_model=no_model) as client:
        stream = await client.get(f"/recommendations/{customer}")
        model = await client.get(f"/recommendations/{_customer()}")
    assert stream.status_code == 200
    assert stream.json()["source"] == "stream"
    assert len(stream.json()["recommended_items"]) == 10  # the default limit
    assert model.status_code == 503
    assert model.json()["error"] == "model_not_ready"
    assert model.headers["retry-after"]


async def test_the_fast_path_answers_as_the_route_does(api_client: AppClient, api_pool: Any) -> None:
    """Plain requests are answered past FastAPI (service.fast_path); the same request written so that
    only FastAPI understands it (a leading zero, an extra parameter) gets the same answer."""
    customer = _customer()
    await _store_latest(api_pool, customer)
    async with api_client() as client:
        pairs = [
            (await client.get(f"/recommendations/{customer}?limit=5"),
             await client.get(f"/recommendations/0{customer}?limit=05")),
            (await client.get(f"/recommendations/{KNOWN_CUSTOMER}?limit=3"),
             await client.get(f"/recommendations/{KNOWN_CUSTOMER}?limit=3&unused=1")),
            (await client.get(f"/recommendations/{UNKNOWN_CUSTOMER}"),
             await client.get(f"/recommendations/{UNKNOWN_CUSTOMER}?unused=1")),
        ]  # fmt: skip
    for fast, routed in pairs:
        assert fast.status_code == routed.status_code == 200
        assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
        assert fast.headers["x-request-id"] and routed.headers["x-request-id"]
        a, b = fast.json(), routed.json()
        if a["source"] != "stream":  # computed now
            assert abs(
                datetime.fromisoformat(a.pop("computed_at")) - datetime.fromisoformat(b.pop("computed_at"))
            ) < timedelta(seconds=30)
        assert a == b
    assert [p[0].json()["source"] for p in pairs] == ["stream", "model", "popular"]


async def test_model_path_for_a_known_customer_without_stream_answer(api_client: AppClient) -> None:
    fake = FakeRecommender(version="fake-v2")
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with api_client(recommender=fake) as client:
        resp = await client.get(f"/recommendations/{KNOWN_CUSTOMER}", params={"limit": 3})
    body = resp.json()
    assert resp.status_code == 200
    assert body["source"] == "model"
    assert body["model_version"] == "fake-v2"
    assert body["event_id"] is None
    assert len(body["recommended_items"]) == 3
    assert datetime.fromisoformat(body["computed_at"]) >= before
    assert fake.asked_customers == [KNOWN_CUSTOMER]


async def test_popular_path_for_an_unknown_customer(api_client: AppClient) -> None:
    async with api_client() as client:
        resp = await client.get(f"/recommendations/{UNKNOWN_CUSTOMER}", params={"limit": 4})
    body = resp.json()
    assert resp.status_code == 200
    assert body["source"] == "popular"
    assert [i["id"] for i in body["recommended_items"]] == list(ITEMS[:4])
    assert body["similar_items"] == {"product_code": None, "similar_items": []}


# ---------------------------------------------------------------- lab endpoints


async def test_lab_endpoints_answer_in_the_labs_shapes(api_client: AppClient) -> None:
    async with api_client() as client:
        emb = await client.post(
            "/user_embeddings",
            json=[
                {"city": "Nantes", "country": "France", "creditlimit": 21000.0},
                {"city": None, "country": "USA", "credit_limit": 0},
            ],
        )
        vector = emb.json()[0]
        from_user = await client.post("/items_from_user", params={"limit": 7}, json=vector)
        from_item = await client.get("/items_from_item", params={"item_id": ITEMS[0], "limit": 6})
        empty = await client.post("/user_embeddings", json=[])
    assert emb.status_code == 200
    assert [len(v) for v in emb.json()] == [DIM, DIM]
    assert from_user.status_code == 200
    assert len(from_user.json()) == 7
    assert set(from_user.json()[0]) == {"id", "score"}
    assert from_item.status_code == 200
    assert len(from_item.json()) == 6
    assert ITEMS[0] not in {i["id"] for i in from_item.json()}
    assert empty.json() == []


# ---------------------------------------------------------------- every 4xx


@pytest.mark.parametrize(
    ("method", "url", "body", "where"),
    [
        ("GET", "/recommendations/abc", None, "path.customer_number"),
        ("GET", "/recommendations/-1", None, "customer_number"),
        ("GET", "/recommendations/1.5", None, "customer_number"),
        ("GET", "/recommendations/99999999999", None, "customer_number"),
        ("GET", "/recommendations/103?limit=0", None, "query.limit"),
        ("GET", "/recommendations/103?limit=101", None, "limit"),
        ("GET", "/recommendations/103?limit=ten", None, "limit"),
        ("POST", "/items_from_user", [0.1] * (DIM - 1), f"at least {DIM}"),
        ("POST", "/items_from_user", [0.1] * (DIM + 1), f"at most {DIM}"),
        ("POST", "/items_from_user", [], "body"),
        ("POST", "/items_from_user", ["a"] * DIM, "body.0"),
        ("POST", "/items_from_user", [True] * DIM, "body.0"),
        ("POST", "/items_from_user", ["0.5"] * DIM, "body.0"),
        ("POST", "/items_from_user", [1e308] * DIM, "body.0"),
        ("POST", "/items_from_user", [0.0] * DIM, "all zeros"),
        ("POST", "/items_from_user", {"embedding": [0.1] * DIM}, "body"),
        ("POST", "/items_from_user?limit=0", [0.1] * DIM, "limit"),
        ("POST", "/user_embeddings", {"city": "Nantes"}, "body"),
        ("POST", "/user_embeddings", [{"city": 5}], "city"),
        ("POST", "/user_embeddings", [{"city": "Nan\x00tes"}], "city"),
        ("POST", "/user_embeddings", [{"country": "x" * 201}], "country"),
        ("POST", "/user_embeddings", [{"creditlimit": "lots"}], "creditlimit"),
        ("POST", "/user_embeddings", [{"creditlimit": "100"}], "creditlimit"),
        ("POST", "/user_embeddings", [{"creditlimit": True}], "creditlimit"),
        ("POST", "/user_embeddings", [{"creditlimit": 1e308}], "creditlimit"),
        ("POST", "/user_embeddings", [{"credit_limit": -1}], "credit_limit"),
        ("POST", "/user_embeddings", [{"town": "Nantes"}], "town"),
        ("GET", "/items_from_item", None, "item_id"),
        ("GET", "/items_from_item?item_id=", None, "item_id"),
        ("GET", "/items_from_item?item_id=x%00y", None, "item_id"),
        ("GET", "/items_from_item?item_id=x%09y", None, "item_id"),
        ("GET", "/items_from_item?item_id=" + "S" * 65, None, "item_id"),
        ("GET", f"/items_from_item?item_id={ITEMS[0]}&limit=1000", None, "limit"),
    ],
)
async def test_invalid_input_is_422_with_a_reason(
    api_client: AppClient, method: str, url: str, body: Any, where: str
) -> None:
    async with api_client() as client:
        resp = await client.request(method, url, json=body)
    assert resp.status_code == 422, resp.text
    err = resp.json()
    assert err["error"] == "invalid_request"
    assert where in err["reason"]
    assert err["request_id"] == resp.headers["x-request-id"]


async def test_non_finite_vectors_are_422(api_client: AppClient) -> None:
    raw = "[" + ",".join(["0.1"] * (DIM - 1) + ["NaN"]) + "]"
    async with api_client() as client:
        resp = await client.post(
            "/items_from_user", content=raw, headers={"content-type": "application/json"}
        )
        not_json = await client.post(
            "/items_from_user", content=b"[0.1,", headers={"content-type": "application/json"}
        )
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_request"
    assert not_json.status_code == 422


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe[1]", "UTF-8"),  # not UTF-8
        (b'[{"city": "\\ud800"}]', "surrogate"),  # a lone surrogate
        (b"[" * 5000 + b"]" * 5000, "depth"),  # nested past 1024 levels
        (b'[{"creditlimit": ' + b"9" * 5000 + b"}]", "infinity"),  # past 4,300 digits and a double
        (b'[{"creditlimit": NaN}]', "unexpected character"),
        (b'[{"creditlimit": 1e400}]', "infinity"),
    ],
)
async def test_json_the_parser_refuses_is_422_not_400(api_client: AppClient, body: bytes, why: str) -> None:
    async with api_client() as client:
        resp = await client.post(
            "/user_embeddings", content=body, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_request"
    assert why in resp.json()["reason"]


async def test_bounds_and_json_numbers_that_are_accepted(api_client: AppClient) -> None:
    async with api_client() as client:
        integer = await client.post("/user_embeddings", json=[{"creditlimit": 21000}])
        edges = await client.post("/user_embeddings", json=[{"creditlimit": 0}, {"creditlimit": 1e9}])
        vector = await client.post("/items_from_user", json=[1e6] + [-1e6] * (DIM - 1))
    assert integer.status_code == 200
    assert edges.status_code == 200 and len(edges.json()) == 2
    assert vector.status_code == 200


async def test_too_many_profiles_is_422(api_client: AppClient) -> None:
    async with api_client(max_embedding_batch=3) as client:
        resp = await client.post("/user_embeddings", json=[{"city": "x"}] * 4)
    assert resp.status_code == 422
    assert "body" in resp.json()["reason"]


async def test_an_oversized_body_is_413_before_it_is_read(api_client: AppClient) -> None:
    async with api_client(max_body_bytes=2048) as client:
        resp = await client.post("/user_embeddings", json=[{"city": "x" * 100}] * 30)
        small = await client.post("/user_embeddings", json=[{"city": "x"}])
    assert resp.status_code == 413
    assert resp.json()["error"] == "too_large"
    assert resp.json()["request_id"] == resp.headers["x-request-id"]
    assert small.status_code == 200


async def test_unknown_item_is_404(api_client: AppClient) -> None:
    async with api_client() as client:
        resp = await client.get("/items_from_item", params={"item_id": "NOPE_1"})
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"
    assert "NOPE_1" in resp.json()["reason"]


async def test_unknown_route_and_wrong_method(api_client: AppClient) -> None:
    async with api_client() as client:
        missing = await client.get("/nowhere")
        wrong = await client.delete("/recommendations/103")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


# ---------------------------------------------------------------- auth


async def test_auth_off_every_route_is_open(api_client: AppClient) -> None:
    async with api_client() as client:
        resp = await client.get("/recommendations/103")
    assert resp.status_code == 200


async def test_auth_on_requires_the_bearer_token(api_client: AppClient) -> None:
    token = "s3cr3t-" + uuid.uuid4().hex
    async with api_client(token=token) as client:
        none = await client.get("/recommendations/103")
        wrong = await client.get("/recommendations/103", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/recommendations/103", headers={"Authorization": "Basic " + token})
        good = await client.get("/recommendations/103", headers={"Authorization": f"Bearer {token}"})
        lab = await client.post("/user_embeddings", json=[])
        lab_ok = await client.post("/user_embeddings", json=[], headers={"Authorization": f"Bearer {token}"})
        probes = [await client.get(p) for p in ("/healthz", "/readyz", "/metrics")]
    assert none.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert none.json()["error"] == "unauthorized"
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert basic.status_code == 401
    assert good.status_code == 200
    assert lab.status_code == 401
    assert lab_ok.status_code == 200
    assert [p.status_code for p in probes] == [200, 200, 200]


async def test_auth_is_checked_before_input_validation(api_client: AppClient) -> None:
    async with api_client(token="t0ken-" + uuid.uuid4().hex, max_body_bytes=2048) as client:
        bad_path = await client.get("/recommendations/not-a-number")
        bad_json = await client.post(
            "/items_from_user", content=b"[0.1,", headers={"content-type": "application/json"}
        )
        not_utf8 = await client.post(
            "/user_embeddings", content=b"\xff\xfe", headers={"content-type": "application/json"}
        )
        wrong_shape = await client.post("/user_embeddings", json={"city": 5})
        too_large = await client.post("/user_embeddings", json=[{"city": "x" * 100}] * 30)
        unknown = await client.get("/nowhere")
        wrong_method = await client.delete("/recommendations/103")
    for resp in (bad_path, bad_json, not_utf8, wrong_shape, too_large, unknown, wrong_method):
        assert resp.status_code == 401, (resp.request.url, resp.text)
        assert resp.json()["error"] == "unauthorized"
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_auth_reads_no_body_before_the_token_is_checked(database_url: str) -> None:
    """At the ASGI level: a request without the token is answered without a single receive()."""
    settings = Settings(database_url=database_url, api_token="t0ken-" + uuid.uuid4().hex)
    app = api_app(settings, recommender=FakeRecommender())
    asked: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # a body of 10 chunks, should anyone read it
        asked.append("receive")
        return {"type": "http.request", "body": b"[" * 100, "more_body": len(asked) < 10}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/user_embeddings", "raw_path": b"/user_embeddings", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555),
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 401
    assert asked == []
    assert (b"connection", b"close") in start["headers"]  # the unread body ends the connection


async def test_openapi_declares_auth_only_when_it_is_on(api_client: AppClient) -> None:
    async with api_client() as client:
        open_doc = (await client.get("/openapi.json")).json()
    async with api_client(token="t0ken-" + uuid.uuid4().hex) as client:
        guarded_doc = (await client.get("/openapi.json")).json()
    op = "/recommendations/{customer_number}"
    assert "401" not in open_doc["paths"][op]["get"]["responses"]
    assert "401" in guarded_doc["paths"][op]["get"]["responses"]
    assert guarded_doc["paths"][op]["get"]["security"]
    assert "security" not in guarded_doc["paths"]["/healthz"]["get"]
    assert set(open_doc["paths"][op]["get"]["responses"]) == {"200", "422", "503"}
    assert "404" in open_doc["paths"]["/items_from_item"]["get"]["responses"]
    assert {"413", "422"} <= set(open_doc["paths"]["/user_embeddings"]["post"]["responses"])


# ---------------------------------------------------------------- probes, ids, metrics


async def test_health_and_readiness(api_client: AppClient) -> None:
    async def no_model() -> Any:
        raise ModelNotReady("no active model version; run `recsys load-vectors`")

    async with api_client() as client:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    async with api_client(recommender=None, open_model=no_model) as client:
        not_ready = await client.get("/readyz")
    assert alive.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["model_version"] == "fake-v1"
    assert not_ready.status_code == 503
    body = not_ready.json()
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["model"]["ok"] is False
    assert "load-vectors" in body["checks"]["model"]["reason"]


async def test_outages_are_reported_without_internals() -> None:
    """A 503 or /readyz says the database is unavailable, not where it is or what the driver said."""
    import socket

    from infra.pg import create_pool

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = "pw-" + uuid.uuid4().hex
    url = f"postgresql://recsys:{secret}@127.0.0.1:{port}/recsys"
    pool = await create_pool(url, min_size=0, max_size=1, timeout_s=2)
    app = api_app(Settings(database_url=url), pool=pool, recommender=FakeRecommender())
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                outage = await client.get("/recommendations/103")
                ready = await client.get("/readyz")
    finally:
        await pool.close()
    assert outage.status_code == 503
    assert outage.json()["error"] == "unavailable"
    assert outage.headers["retry-after"]
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"]["ok"] is False
    for resp in (outage, ready):
        for internal in ("127.0.0.1", str(port), secret, "recsys:", "Errno", "Connect call"):
            assert internal not in resp.text, (internal, resp.text)


async def test_readiness_reports_an_unreachable_database(database_url: str, api_client: AppClient) -> None:
    import asyncpg as apg

    from infra.pg import create_pool
    from recsys.runtime import api_app
    from recsys.settings import Settings

    pool = await create_pool(database_url, min_size=0, max_size=1)
    await pool.close()  # a closed pool fails every acquire, like a database that went away
    settings = Settings(database_url=database_url)
    app = api_app(settings, pool=pool, recommender=FakeRecommender())
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            resp = await client.get("/readyz")
    assert isinstance(pool, apg.Pool)
    assert resp.status_code == 503
    assert resp.json()["checks"]["database"]["ok"] is False


async def test_request_ids_are_echoed_or_generated(api_client: AppClient) -> None:
    async with api_client() as client:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        generated = await client.get("/healthz")
        insane = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" * 50})
        err = await client.get("/recommendations/x", headers={"X-Request-ID": "req-422"})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert insane.headers["x-request-id"] != "a b\tc" * 50
    assert err.json()["request_id"] == "req-422"


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == x for k, x in labels.items()))


async def test_metrics_count_requests_by_route_template_status_and_source(
    api_client: AppClient, api_pool: Any
) -> None:
    customer = _customer()
    await _store_latest(api_pool, customer)
    route = "/recommendations/{customer_number}"
    async with api_client() as client:
        before = _samples((await client.get("/metrics")).text)
        await client.get(f"/recommendations/{customer}")
        await client.get(f"/recommendations/{KNOWN_CUSTOMER}")
        await client.get(f"/recommendations/{UNKNOWN_CUSTOMER}")
        await client.get("/recommendations/bad")
        await client.get("/no/such/path")
        resp = await client.get("/metrics")
    after = _samples(resp.text)
    assert resp.headers["content-type"].startswith("text/plain")

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("recsys_api_requests_total", route=route, method="GET", status="200") == 3
    assert delta("recsys_api_requests_total", route=route, method="GET", status="422") == 1
    assert delta("recsys_api_requests_total", route="<unmatched>", status="404") == 1
    assert delta("recsys_api_request_duration_seconds_count", route=route, status="200") == 3
    for source in ("stream", "model", "popular"):
        assert delta("recsys_api_recommendations_total", source=source) == 1
    assert _value(after, "recsys_api_model_info", model_version="fake-v1") == 1
    routes = {lbl["route"] for lbl, _ in after["recsys_api_requests_total"]}
    assert not any(str(customer) in r for r in routes)  # templates, never ids
