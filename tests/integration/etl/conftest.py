"""Fresh source databases for the ETL tests: one MariaDB and one embedded-PostgreSQL database per module,
created and dropped here (never the ``test`` database's other tables), and the independent SQL join.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recsys.stack import StackInfo

COLUMNS = [
    ("r", "customerNumber"),
    ("c", "city"),
    ("c", "state"),
    ("c", "postalCode"),
    ("c", "country"),
    ("c", "creditLimit"),
    ("r", "productCode"),
    ("p", "productLine"),
    ("p", "productScale"),
    ("p", "quantityInStock"),
    ("p", "buyPrice"),
    ("p", "MSRP"),
    ("r", "productRating"),
]
MONEY = {"creditLimit", "buyPrice", "MSRP"}


def _pymysql(url: str, database: str | None = None) -> Any:
    import pymysql

    u = sa.make_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=database,
        connect_timeout=5,
        autocommit=True,
    )


def new_mariadb(mysql_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh, empty MariaDB database: its SQLAlchemy URL and a function that drops it."""
    name = f"recsys_test_{uuid.uuid4().hex[:10]}"
    conn = _pymysql(mysql_url)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()

    def drop() -> None:
        c = _pymysql(mysql_url)
        with c.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        c.close()

    return sa.make_url(mysql_url).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(scope="module")
def mariadb_source(mysql_url: str) -> Iterator[str]:
    url, drop = new_mariadb(mysql_url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="module")
def pg_source(stack: StackInfo) -> Iterator[str]:
    """A fresh database on the embedded PostgreSQL (the same server as the default ``shop``)."""
    import psycopg

    name = f"recsys_test_{uuid.uuid4().hex[:10]}"
    admin = sa.make_url(stack.source_url).set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(stack.source_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql_join(url: str) -> dict[tuple[int, str], dict[str, Any]]:
    """ratings JOIN products JOIN customers in plain SQL through the raw driver, keyed by the pair."""
    u = sa.make_url(url)
    if u.get_backend_name() == "postgresql":
        import psycopg

        q = '"'
        dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
        conn: Any = psycopg.connect(dsn, connect_timeout=5)
    else:
        q = "`"
        conn = _pymysql(url, database=u.database)
    select = ", ".join(f"{alias}.{q}{name}{q}" for alias, name in COLUMNS)
    sql = (
        f"SELECT {select} FROM ratings r "
        f"JOIN products p ON p.{q}productCode{q} = r.{q}productCode{q} "
        f"JOIN customers c ON c.{q}customerNumber{q} = r.{q}customerNumber{q}"
    )
    try:
        cur = conn.cursor()
        cur.execute(sql)
        rows = cur.fetchall()
    finally:
        conn.close()
    names = [name for _, name in COLUMNS]
    return {(int(row[0]), str(row[6])): dict(zip(names, row, strict=True)) for row in rows}


def read_lake_files(lake_bytes: Callable[[str], bytes], dataset: str = "ratings_ml_training") -> pa.Table:
    """The published run read with plain json + pyarrow (not through infra.lake)."""
    pointer = json.loads(lake_bytes(f"{dataset}/_latest.json"))
    manifest = json.loads(lake_bytes(pointer["manifest"]))
    tables = [pq.read_table(pa.BufferReader(lake_bytes(key))) for key in manifest["files"]]
    table = pa.concat_tables(tables)
    assert table.num_rows == manifest["row_count"]
    return table


def local_bytes(root: Path) -> Callable[[str], bytes]:
    return lambda key: (root / key).read_bytes()


def s3_bytes(bucket: str, prefix: str) -> Callable[[str], bytes]:
    import boto3

    client = boto3.client("s3")
    return lambda key: bytes(client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())


def assert_matches_sql(table: pa.Table, expected: dict[tuple[int, str], dict[str, Any]]) -> None:
    """Row by row, column by column: the lake holds exactly the SQL join, money to the cent."""
    assert table.num_rows == len(expected) > 0
    assert table.schema.field("creditLimit").type == pa.float64()
    assert table.schema.field("buyPrice").type == pa.float64()
    seen = set()
    for row in table.to_pylist():
        key = (row["customerNumber"], row["productCode"])
        assert key not in seen
        seen.add(key)
        want = expected[key]
        for name, value in want.items():
            got = row[name]
            if value is None:
                assert got is None, (key, name)
            elif name in MONEY:
                assert Decimal(repr(got)) == Decimal(value), (key, name, got, value)
            elif name == "productRating":
                assert got == float(value), (key, name)
            else:
                assert got == value, (key, name, got, value)
    assert seen == set(expected)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session (local[2], small shuffles) for every Spark test of the run.

    Skipped, with the reason, only where Java is missing; a missing MariaDB JDBC driver fails
    (make install-dev installs Debian's libmariadb-java)."""
    import shutil

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the Spark engine needs Java 17 (apt-get install openjdk-17-jre-headless)")
    from etl.config import EtlSettings
    from etl.spark_job import spark_session

    settings = EtlSettings(spark_master="local[2]", spark_shuffle_partitions=2, spark_driver_memory="768m")
    session = spark_session(settings)
    try:
        yield session
    finally:
        session.stop()
