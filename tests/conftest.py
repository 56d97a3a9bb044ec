"""Shared fixtures: the embedded stack (real PostgreSQL + pgvector, a moto server) for the session,
and the record-path fuzzers' hostile records.

``RECSYS_TEST_DATABASE_URL`` runs the suite against an external PostgreSQL with pgvector instead;
the MariaDB source is ``RECSYS_TEST_MYSQL_URL`` (default: the machine's 127.0.0.1:3306, root).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from consumer.kpl import pack
from infra.pg import migrate
from recsys.stack import LocalStack, StackInfo
from recsys.testing import POISON

MYSQL_URL = os.environ.get("RECSYS_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """One embedded stack for the whole run, stopped and deleted at the end."""
    local = LocalStack(tmp_path_factory.mktemp("stack"))
    info = local.up()
    env = info.env()
    saved = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if key.startswith("AWS_"):
            os.environ[key] = value
    try:
        yield info
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        local.destroy()


@pytest.fixture(scope="session")
def aws_endpoint(stack: StackInfo) -> str:
    return stack.aws_endpoint_url


@pytest.fixture(scope="session")
async def database_url(stack: StackInfo) -> str:
    """The migrated test database (external one if RECSYS_TEST_DATABASE_URL is set)."""
    url = os.environ.get("RECSYS_TEST_DATABASE_URL") or stack.database_url
    await migrate(url)
    return url


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def s3_bucket(aws_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """The MariaDB on the machine; tests that need it skip with a reason when it is not there."""
    import pymysql

    try:
        pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3).close()
    except pymysql.Error as exc:
        pytest.skip(f"MariaDB is not reachable at 127.0.0.1:3306: {exc}")
    return MYSQL_URL


@pytest.fixture(scope="session")
def classicmodels_sql() -> Path | None:
    """The public classicmodels dump from ../shared/data, when it is beside the checkout (or where
    ``RECSYS_CLASSICMODELS_SQL`` says)."""
    here = Path(__file__).resolve().parents[1]
    given = os.environ.get("RECSYS_CLASSICMODELS_SQL")
    for candidate in (
        *([Path(given)] if given else []),
        here.parent / "shared" / "data" / "classicmodels.sql",
    ):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- the record-path fuzzers' input
def _hostile_records() -> SearchStrategy[bytes]:
    """Hostile records: arbitrary bytes, KPL aggregates of anything, and JSON events whose every
    field may be the wrong type, deeply nested, a huge number, or text with NUL, control characters
    and lone surrogates; plus mutations of a valid event. Imports hypothesis (a test dependency)."""

    nasty_text = st.one_of(
        st.text(max_size=20),
        st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cs", "Co", "Zl"]), max_size=8),
        st.sampled_from(["\u0000", "\ud800", "S10\udfff", "\u2028", "", " ", "x" * 300, "S10_1678"]),
    )
    numbers = st.one_of(
        st.integers(),
        st.integers(min_value=2**63 - 2, max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, -1, 2**31 - 1, 2**31, 10**30, 1e308, -1e308, 5e-324, 1.5]),
    )
    scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
        max_leaves=12,
    )
    item = st.fixed_dictionaries(
        {},
        optional={
            "product_code": st.one_of(nasty_text, values),
            "quantity": st.one_of(numbers, nasty_text, values),
            "in_shopping_cart": st.one_of(st.booleans(), values),
        },
    )
    event = st.fixed_dictionaries(
        {"customer_number": st.one_of(st.integers(0, 2**31 - 1), numbers, nasty_text, values)},
        optional={
            "session_id": st.one_of(nasty_text, numbers, values),
            "city": st.one_of(nasty_text, values),
            "country": st.one_of(nasty_text, values),
            "credit_limit": st.one_of(numbers, nasty_text, values),
            "event_time": st.one_of(
                st.sampled_from(
                    ["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
                ),
                nasty_text,
                values,
            ),
            "browse_history": st.one_of(st.lists(item, min_size=1, max_size=4), values),
            "extra": values,
        },
    )

    def encode(obj: dict[str, Any]) -> bytes:
        # json.dumps writes lone surrogates as \\udXXX escapes and huge ints in full: what a hostile
        # producer can send; ensure_ascii=False sometimes, so raw control characters travel too
        return json.dumps(obj, ensure_ascii=len(obj) % 2 == 0, allow_nan=True).encode(
            "utf-8", "surrogatepass"
        )

    json_events = event.map(encode)
    deep = st.integers(min_value=500, max_value=200_000).map(
        lambda n: b'{"customer_number": 7, "browse_history": ' + b"[" * n + b"]" * n + b"}"
    )
    plain = st.one_of(json_events, json_events, deep, st.binary(max_size=200))
    aggregates = st.lists(st.tuples(st.text(max_size=5), plain), min_size=1, max_size=3).map(
        lambda records: pack([(key, data, None) for key, data in records])
    )
    corrupted = st.tuples(aggregates, st.integers(min_value=0, max_value=400), st.integers(0, 255)).map(
        lambda a: a[0][: a[1]] + bytes([a[2]]) + a[0][a[1] + 1 :]
    )
    return st.one_of(plain, aggregates, corrupted, st.sampled_from([data for data, _ in POISON.values()]))


@pytest.fixture(scope="session")
def hostile_record() -> SearchStrategy[bytes]:
    """One hostile Kinesis record's bytes (draw it with ``data.draw`` in a ``@given(st.data())`` test)."""
    return _hostile_records()
