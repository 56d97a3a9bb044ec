"""What the ETL unit tests share: a shop's three source tables in SQLite, as the MySQL source has them."""

from __future__ import annotations

from sqlalchemy.engine import Connection

CUSTOMERS_DDL = (
    "CREATE TABLE customers (customerNumber INTEGER PRIMARY KEY, city TEXT, state TEXT, "
    "postalCode TEXT, country TEXT, creditLimit NUMERIC(10,2))"
)
PRODUCTS_DDL = (
    "CREATE TABLE products (productCode TEXT PRIMARY KEY, productLine TEXT, productScale TEXT, "
    "quantityInStock INTEGER, buyPrice NUMERIC(10,2), MSRP NUMERIC(10,2))"
)


def create_shop_tables(conn: Connection, ratings_tail: str) -> None:
    """customers, products and ratings; ``ratings_tail`` is what the ratings table has after its three
    contract columns (a last-change column, a primary key), starting with its comma."""
    conn.exec_driver_sql(CUSTOMERS_DDL)
    conn.exec_driver_sql(PRODUCTS_DDL)
    columns = "customerNumber INTEGER, productCode TEXT, productRating INTEGER"
    conn.exec_driver_sql(f"CREATE TABLE ratings ({columns}{ratings_tail})")
