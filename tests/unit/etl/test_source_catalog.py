"""load_catalog and the schema check, on a SQLite file (the SQL is the same Core for every dialect)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from core.errors import ConfigError, SourceSchemaError
from etl.source import CustomerRow, check_schema, load_catalog, open_source
from infra.urls import redact_url


def _shop(path: Path, *, with_country: bool = True) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    country = ", country TEXT" if with_country else ""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE customers (customerNumber INTEGER PRIMARY KEY, city TEXT{country}, "
            "creditLimit NUMERIC(10,2))"
        )
        conn.exec_driver_sql("CREATE TABLE products (productCode TEXT PRIMARY KEY)")
        if with_country:
            conn.exec_driver_sql(
                "INSERT INTO customers VALUES (112, 'Las Vegas', 'USA', 71800.5), "
                "(103, 'Nantes', 'France', NULL)"
            )
        conn.exec_driver_sql("INSERT INTO products VALUES ('S18_2238'), ('S10_1678')")
    engine.dispose()
    return url


def test_catalog_lists_customers_and_products_in_order(tmp_path: Path) -> None:
    catalog = load_catalog(_shop(tmp_path / "shop.db"))
    assert catalog.customers == [
        CustomerRow(103, "Nantes", "France", None),
        CustomerRow(112, "Las Vegas", "USA", 71800.5),
    ]
    assert catalog.product_codes == ["S10_1678", "S18_2238"]


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceSchemaError, match=r"customers.*no column 'country'"):
        load_catalog(_shop(tmp_path / "shop.db", with_country=False))


def test_a_missing_table_is_named(tmp_path: Path) -> None:
    engine = open_source(_shop(tmp_path / "shop.db"))
    with pytest.raises(SourceSchemaError, match="no table 'ratings'"):
        check_schema(engine)
    engine.dispose()


@pytest.mark.parametrize("url", ["not a url", "oracle://scott@db/x", "mysql+nosuchdriver://root@h/db"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_source(url)


def test_passwords_are_hidden() -> None:
    shown = redact_url("mysql+pymysql://app:s3cret@db:3306/shop")
    assert "s3cret" not in shown and "app:***@db" in shown
