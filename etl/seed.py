"""``recsys seed``: create and fill the shop's tables (``customers``, ``products``, ``ratings``).

Works on an empty database (MySQL/MariaDB or PostgreSQL) and on an existing classicmodels database
that lacks ``ratings``: tables that exist with rows are kept as they are; only what is missing or
empty is generated (see :mod:`etl.generator` for the story behind the numbers). Ratings are
generated and inserted a block of customers at a time, so memory stays flat at any scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.errors import SourceSchemaError
from etl.generator import RatingModel, generate_customers, generate_products, shop_size
from etl.source import open_source, source_errors
from infra.logs import get_logger
from infra.urls import redact_url

__all__ = ["UPDATE_TIME_COLUMN", "SeedSummary", "add_update_time", "seed", "shop_tables"]

log = get_logger(__name__)
INSERT_ROWS = 10_000
UPDATE_TIME_COLUMN = "updatedAt"  # EtlSettings.update_time_column's default


def shop_tables(metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The classicmodels ``customers`` and ``products`` tables and the ``ratings`` table, as Core."""
    md = metadata or sa.MetaData()
    customers = sa.Table(
        "customers",
        md,
        sa.Column("customerNumber", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customerName", sa.String(50), nullable=False),
        sa.Column("contactLastName", sa.String(50), nullable=False),
        sa.Column("contactFirstName", sa.String(50), nullable=False),
        sa.Column("phone", sa.String(50), nullable=False),
        sa.Column("addressLine1", sa.String(50), nullable=False),
        sa.Column("addressLine2", sa.String(50)),
        sa.Column("city", sa.String(50), nullable=False),
        sa.Column("state", sa.String(50)),
        sa.Column("postalCode", sa.String(15)),
        sa.Column("country", sa.String(50), nullable=False),
        sa.Column("salesRepEmployeeNumber", sa.Integer),
        sa.Column("creditLimit", sa.Numeric(10, 2)),
    )
    products = sa.Table(
        "products",
        md,
        sa.Column("productCode", sa.String(15), primary_key=True),
        sa.Column("productName", sa.String(70), nullable=False),
        sa.Column("productLine", sa.String(50), nullable=False, index=True),
        sa.Column("productScale", sa.String(10), nullable=False),
        sa.Column("productVendor", sa.String(50), nullable=False),
        sa.Column("productDescription", sa.Text, nullable=False),
        sa.Column("quantityInStock", sa.SmallInteger, nullable=False),
        sa.Column("buyPrice", sa.Numeric(10, 2), nullable=False),
        sa.Column("MSRP", sa.Numeric(10, 2), nullable=False),
    )
    ratings = sa.Table(
        "ratings",
        md,
        sa.Column("customerNumber", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("productCode", sa.String(15), primary_key=True),
        sa.Column("productRating", sa.SmallInteger, nullable=False),
    )
    ratings.append_constraint(
        sa.CheckConstraint(ratings.c.productRating.between(1, 5), name="ratings_rating_1_to_5")
    )
    return customers, products, ratings


@dataclass(frozen=True, slots=True)
class SeedSummary:
    source: str
    scale: float
    seed: int
    customers_created: int
    products_created: int
    ratings_written: int
    purchased_pairs: int
    customers_total: int
    products_total: int
    kept: list[str] = field(default_factory=list)  # tables that had rows and were left alone
    seconds: float = 0.0
    added_update_time: bool = False  # ratings got its last-change column (incremental runs)


ProgressFn = Callable[[int], None]


def seed(
    source_url: str,
    scale: float = 1.0,
    seed: int = 42,
    *,
    reset_ratings: bool = False,
    insert_rows: int = INSERT_ROWS,
) -> SeedSummary:
    """Create what is missing in the shop at ``source_url`` and fill what is empty.

    ``reset_ratings`` empties an existing ``ratings`` table first (customers and products are never
    deleted). Raises ``ConfigError`` (bad URL, bad scale), ``DatabaseUnavailable``, or
    ``SourceSchemaError`` when an existing table lacks a column the generator writes.
    """
    size = shop_size(scale)
    started = time.perf_counter()
    engine = open_source(source_url)
    try:
        with source_errors(source_url):
            return _seed(
                engine,
                url=source_url,
                scale=scale,
                seed_value=seed,
                per_customer=size.ratings_per_customer,
                reset_ratings=reset_ratings,
                insert_rows=insert_rows,
                started=started,
            )
    finally:
        engine.dispose()


def _count(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _seed(
    engine: Engine,
    *,
    url: str,
    scale: float,
    seed_value: int,
    per_customer: float,
    reset_ratings: bool,
    insert_rows: int,
    started: float,
) -> SeedSummary:
    customers, products, ratings = shop_tables()
    existing = set(sa.inspect(engine).get_table_names())
    kept: list[str] = []
    created = {"customers": 0, "products": 0}
    with engine.begin() as conn:
        for table in (customers, products, ratings):
            if table.name not in existing:
                table.create(conn)
                log.info("created table %s", table.name)
    _check_writable(engine, existing)
    added_update_time = add_update_time(engine)
    with engine.begin() as conn:
        for table, rows_fn in ((customers, generate_customers), (products, generate_products)):
            if _count(conn, table) > 0:
                kept.append(table.name)
                continue
            rows = rows_fn(scale, seed_value)
            for start in range(0, len(rows), insert_rows):
                conn.execute(table.insert(), rows[start : start + insert_rows])
            created[table.name] = len(rows)
            log.info("generated %d %s", len(rows), table.name)
    with engine.begin() as conn:
        existing_ratings = _count(conn, ratings)
        if existing_ratings and not reset_ratings:
            log.info("ratings already has %d rows: kept (reset them to regenerate)", existing_ratings)
            return SeedSummary(
                source=redact_url(url),
                scale=scale,
                seed=seed_value,
                customers_created=created["customers"],
                products_created=created["products"],
                ratings_written=0,
                purchased_pairs=0,
                customers_total=_count(conn, customers),
                products_total=_count(conn, products),
                kept=[*kept, "ratings"],
                seconds=time.perf_counter() - started,
                added_update_time=added_update_time,
            )
        if existing_ratings:
            conn.execute(ratings.delete())
            log.info("emptied ratings (%d rows)", existing_ratings)
        shop_customers = [
            (int(n), country, float(limit) if limit is not None else None)
            for n, country, limit in conn.execute(
                sa.select(customers.c.customerNumber, customers.c.country, customers.c.creditLimit).order_by(
                    customers.c.customerNumber
                )
            )
        ]
        shop_products = [
            (str(code), line, float(price) if price is not None else None)
            for code, line, price in conn.execute(
                sa.select(products.c.productCode, products.c.productLine, products.c.buyPrice).order_by(
                    products.c.productCode
                )
            )
        ]
        purchased = _purchased_pairs(conn, existing)
    model = RatingModel(shop_customers, shop_products, seed_value)
    written = 0
    pairs = sum(len(codes) for codes in purchased.values())
    buffer: list[dict[str, object]] = []
    with engine.connect() as conn:
        for block in model.blocks(per_customer, purchased):
            buffer.extend({"customerNumber": c, "productCode": p, "productRating": r} for c, p, r in block)
            if len(buffer) >= insert_rows:
                written += _insert(conn, ratings, buffer)
                buffer = []
                log.info("seed progress", extra={"fields": {"ratings_written": written}})
        if buffer:
            written += _insert(conn, ratings, buffer)
    log.info("generated %d ratings (%d purchased pairs)", written, pairs)
    return SeedSummary(
        source=redact_url(url),
        scale=scale,
        seed=seed_value,
        customers_created=created["customers"],
        products_created=created["products"],
        ratings_written=written,
        purchased_pairs=pairs,
        customers_total=len(shop_customers),
        products_total=len(shop_products),
        kept=kept,
        seconds=time.perf_counter() - started,
        added_update_time=added_update_time,
    )


def add_update_time(engine: Engine, column: str = UPDATE_TIME_COLUMN) -> bool:
    """The migration of the ``ratings`` table for incremental ETL runs: a last-change time that the
    database keeps (set on insert, moved on every update), with an index for the window's read.
    Idempotent; returns True when it added the column. SQLite (tests) gets the column without the
    automatic update."""
    present = {c["name"].lower() for c in sa.inspect(engine).get_columns("ratings")}
    if column.lower() in present:
        return False
    backend = engine.dialect.name
    if backend in ("mysql", "mariadb"):
        statements = [
            f"ALTER TABLE ratings ADD COLUMN `{column}` TIMESTAMP(6) NOT NULL "
            "DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), "
            f"ADD INDEX ratings_{column.lower()} (`{column}`)"
        ]
    elif backend == "postgresql":
        statements = [
            f'ALTER TABLE ratings ADD COLUMN "{column}" timestamptz NOT NULL DEFAULT now()',
            f'CREATE INDEX ratings_{column.lower()} ON ratings ("{column}")',
            "CREATE OR REPLACE FUNCTION recsys_ratings_touch() RETURNS trigger LANGUAGE plpgsql AS "
            f'$$ BEGIN NEW."{column}" := now(); RETURN NEW; END $$',
            "CREATE TRIGGER ratings_touch BEFORE UPDATE ON ratings "
            "FOR EACH ROW EXECUTE FUNCTION recsys_ratings_touch()",
        ]
    else:
        statements = [f'ALTER TABLE ratings ADD COLUMN "{column}" TIMESTAMP']
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    log.info("added ratings.%s (the last-change time incremental ETL runs read)", column)
    return True


def _insert(conn: Connection, table: sa.Table, rows: list[dict[str, object]]) -> int:
    """Insert and commit one chunk (a chunk per transaction keeps undo logs small at any scale)."""
    conn.execute(table.insert(), rows)
    conn.commit()
    return len(rows)


def _check_writable(engine: Engine, existing: set[str]) -> None:
    """An existing table must have the columns the generator reads and writes."""
    inspector = sa.inspect(engine)
    customers, products, ratings = shop_tables()
    for table in (customers, products, ratings):
        if table.name not in existing:
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                raise SourceSchemaError(f"the existing table {table.name!r} has no column {column.name!r}")


def _purchased_pairs(conn: Connection, existing: set[str]) -> dict[int, set[str]]:
    """(customer, product) pairs somebody ordered, from classicmodels' orders and orderdetails."""
    if not {"orders", "orderdetails"} <= existing:
        return {}
    orders = sa.table("orders", sa.column("orderNumber"), sa.column("customerNumber"))
    details = sa.table("orderdetails", sa.column("orderNumber"), sa.column("productCode"))
    query = (
        sa.select(orders.c.customerNumber, details.c.productCode)
        .select_from(orders.join(details, orders.c.orderNumber == details.c.orderNumber))
        .distinct()
    )
    pairs: dict[int, set[str]] = {}
    for customer, code in conn.execute(query):
        pairs.setdefault(int(customer), set()).add(str(code))
    return pairs
