"""Shared fixtures: the embedded stack (real PostgreSQL + pgvector, a moto server) for the session.

``RECSYS_TEST_DATABASE_URL`` runs the suite against an external PostgreSQL with pgvector instead;
the MariaDB source is ``RECSYS_TEST_MYSQL_URL`` (default: the machine's 127.0.0.1:3306, root).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from infra.pg import migrate
from recsys.stack import LocalStack, StackInfo

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
