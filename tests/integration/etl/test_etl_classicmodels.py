"""The real-world input: the public classicmodels dump, which has no ratings table."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl.pipeline import run_etl
from etl.seed import seed

from .conftest import assert_matches_sql, local_bytes, new_mariadb, read_lake_files, sql_join

pytestmark = pytest.mark.mariadb


@pytest.fixture(scope="module")
def classicmodels(mysql_url: str, classicmodels_sql: Path | None) -> Iterator[str]:
    if classicmodels_sql is None:
        pytest.skip("the classicmodels dump is not beside the checkout")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb/mysql client to load the dump")
    url, drop = new_mariadb(mysql_url)
    name = sa.make_url(url).database
    dump = classicmodels_sql.read_text(encoding="utf-8", errors="replace")
    dump = dump.replace("`classicmodels`", f"`{name}`")  # the dump creates and uses its own database
    u = sa.make_url(mysql_url)
    cmd = [client, f"-u{u.username or 'root'}", f"-h{u.host or '127.0.0.1'}", f"-P{u.port or 3306}"]
    if u.password:
        cmd.append(f"-p{u.password}")
    try:
        subprocess.run(cmd, input=dump, text=True, check=True, capture_output=True, timeout=120)
        yield url
    finally:
        drop()


def test_seed_keeps_the_shop_and_rates_every_purchased_pair(classicmodels: str, tmp_path: Path) -> None:
    summary = seed(classicmodels, scale=1, seed=42)
    assert summary.kept == ["customers", "products"]
    assert (summary.customers_total, summary.products_total) == (122, 110)
    engine = sa.create_engine(classicmodels)
    try:
        with engine.connect() as conn:
            purchased = set(
                conn.exec_driver_sql(
                    "SELECT DISTINCT o.customerNumber, d.productCode FROM orders o "
                    "JOIN orderdetails d ON d.orderNumber = o.orderNumber"
                ).all()
            )
            rated = set(conn.exec_driver_sql("SELECT customerNumber, productCode FROM ratings").all())
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM customers").scalar_one() == 122
    finally:
        engine.dispose()
    assert summary.purchased_pairs == len(purchased) > 2_000
    assert purchased <= rated and len(rated) == summary.ratings_written > len(purchased)

    run_etl(classicmodels, str(tmp_path))
    table = read_lake_files(local_bytes(tmp_path))
    assert_matches_sql(table, sql_join(classicmodels))
    atelier = next(r for r in table.to_pylist() if r["customerNumber"] == 103)
    assert atelier["creditLimit"] == 21000.0 and atelier["state"] is None and atelier["city"] == "Nantes"
