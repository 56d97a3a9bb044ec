"""Seed and ETL on the embedded default (PostgreSQL), and the same rows as on MariaDB."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etl.pipeline import run_etl
from etl.seed import seed
from etl.source import load_catalog
from infra.lake import latest_run
from infra.objectstore import LocalStore

from .conftest import assert_matches_sql, local_bytes, new_mariadb, read_lake_files, sql_join


@pytest.fixture(scope="module")
def seeded(pg_source: str) -> str:
    summary = seed(pg_source, scale=1, seed=42)
    assert summary.customers_total == 122 and summary.products_total == 110
    return pg_source


def test_etl_partitioned_by_customer_matches_the_sql_join(seeded: str, tmp_path: Path) -> None:
    summary = run_etl(seeded, str(tmp_path), partition_by="customerNumber", chunk_rows=500)
    expected = sql_join(seeded)
    table = read_lake_files(local_bytes(tmp_path))
    assert_matches_sql(table, expected)
    customers = {number for number, _ in expected}
    assert summary.files == len(customers)
    run = latest_run(LocalStore(str(tmp_path)))
    for key in run.files:
        number = int(key.split("/")[3].removeprefix("customerNumber="))
        assert set(pq.read_table(tmp_path / key).column("customerNumber").to_pylist()) == {number}


def test_catalog_reads_the_embedded_shop(seeded: str) -> None:
    catalog = load_catalog(seeded)
    assert len(catalog.customers) == 122 and len(catalog.product_codes) == 110
    assert catalog.customers[0].customer_number == 103 and catalog.customers[0].country


@pytest.mark.mariadb
def test_the_same_seed_gives_the_same_shop_on_both_databases(seeded: str, mysql_url: str) -> None:
    url, drop = new_mariadb(mysql_url)
    try:
        seed(url, scale=1, seed=42)
        assert sql_join(url) == sql_join(seeded)
    finally:
        drop()
