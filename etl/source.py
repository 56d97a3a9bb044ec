"""The shop's source database (MySQL/MariaDB, or the embedded PostgreSQL ``shop`` database).

One SQLAlchemy Core engine per call site, built by :func:`open_source`, with connect and read
timeouts; driver errors are mapped here (a bad URL is a ``ConfigError``, a database that does not
answer is ``DatabaseUnavailable``, a missing table or column is ``SourceSchemaError``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from core.errors import ConfigError, DatabaseUnavailable, SourceSchemaError
from infra.urls import check_url, redact_url, scrub

__all__ = [
    "REQUIRED_COLUMNS",
    "Catalog",
    "CustomerRow",
    "check_schema",
    "load_catalog",
    "open_source",
    "source_errors",
]

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 600  # one fetch of a streaming cursor; long enough for a server-side sort

# What the pipeline reads from each table (ratings JOIN products JOIN customers).
REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "ratings": ("customerNumber", "productCode", "productRating"),
    "products": (
        "productCode",
        "productLine",
        "productScale",
        "quantityInStock",
        "buyPrice",
        "MSRP",
    ),
    "customers": ("customerNumber", "city", "state", "postalCode", "country", "creditLimit"),
}


@dataclass(frozen=True, slots=True)
class CustomerRow:
    customer_number: int
    city: str | None
    country: str | None
    credit_limit: float | None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Who shops and what is sold: what the event producer draws browsing sessions from."""

    customers: list[CustomerRow]
    product_codes: list[str]


def open_source(url: str) -> Engine:
    """An engine for ``url`` (``mysql+pymysql://`` or ``postgresql+psycopg://``); no connection yet."""
    check_url(url, "--source-url")
    try:
        parsed = sa.make_url(url)
    except ArgumentError as exc:
        # not echoed: in text that is not a URL, nothing tells which part is a secret
        raise ConfigError("--source-url is not a database URL (e.g. mysql+pymysql://root@host/db)") from exc
    backend = parsed.get_backend_name()
    connect_args: dict[str, object]
    if backend in ("mysql", "mariadb"):
        connect_args = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            # a streaming read pauses while a finished file uploads: let the server wait for us;
            # timestamps in UTC (the incremental runs' --since)
            "init_command": f"SET SESSION net_write_timeout = {READ_TIMEOUT_S}, time_zone = '+00:00'",
        }
    elif backend == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, "options": "-c timezone=UTC"}
    elif backend == "sqlite":
        connect_args = {}
    else:
        raise ConfigError(
            f"--source-url: unsupported database {backend!r}; use mysql+pymysql:// or postgresql+psycopg://"
        )
    try:
        return sa.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise ConfigError(f"--source-url {redact_url(url)}: {scrub(str(exc), url)}") from exc


@contextmanager
def source_errors(url: str) -> Iterator[None]:
    """Map driver errors raised inside the block to ours (one line, the URL's secrets hidden)."""
    shown = redact_url(url)
    try:
        yield
    except sa.exc.OperationalError as exc:
        if exc.connection_invalidated or _is_connect_error(exc):
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseUnavailable(f"cannot reach {shown}: {scrub(reason, url)}") from exc
        raise DatabaseUnavailable(f"{shown}: {scrub(_first_line(exc), url)}") from exc
    except sa.exc.ProgrammingError as exc:
        raise SourceSchemaError(f"{shown}: {scrub(_first_line(exc), url)}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"{shown}: {scrub(_first_line(exc), url)}") from exc


def _first_line(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_connect_error(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in (
            "can't connect",
            "connection refused",
            "unknown database",
            "timeout",
            "does not exist",
            "access denied",
            "password",
        )
    )


def check_schema(
    engine: Engine, required: Mapping[str, Sequence[str]] = REQUIRED_COLUMNS
) -> dict[str, dict[str, str]]:
    """The actual column names of each required table, keyed by the name we use.

    MySQL matches column names without regard to case; the actual spelling is returned so queries
    quote it right on every database. Raises ``SourceSchemaError`` naming the first missing table or
    column.
    """
    inspector = sa.inspect(engine)
    tables = {t.lower(): t for t in inspector.get_table_names()}
    found: dict[str, dict[str, str]] = {}
    for table, columns in required.items():
        actual_table = tables.get(table) or tables.get(table.lower())
        if actual_table is None:
            raise SourceSchemaError(
                f"the source has no table {table!r} (needed columns: {', '.join(columns)})"
            )
        present = {c["name"]: c["name"] for c in inspector.get_columns(actual_table)}
        lowered = {name.lower(): name for name in present}
        mapping: dict[str, str] = {"__table__": actual_table}
        for column in columns:
            actual = present.get(column) or lowered.get(column.lower())
            if actual is None:
                raise SourceSchemaError(f"the source table {table!r} has no column {column!r}")
            mapping[column] = actual
        found[table] = mapping
    return found


def load_catalog(source_url: str) -> Catalog:
    """Every customer (number, city, country, credit limit) and product code of the source."""
    engine = open_source(source_url)
    try:
        with source_errors(source_url):
            names = check_schema(
                engine,
                {
                    "customers": ("customerNumber", "city", "country", "creditLimit"),
                    "products": ("productCode",),
                },
            )
            c, p = names["customers"], names["products"]
            customers_t = sa.table(
                c["__table__"],
                *(sa.column(c[k]) for k in ("customerNumber", "city", "country", "creditLimit")),
            )
            products_t = sa.table(p["__table__"], sa.column(p["productCode"]))
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(*customers_t.columns).order_by(customers_t.c[c["customerNumber"]])
                ).all()
                codes = (
                    conn.execute(
                        sa.select(products_t.c[p["productCode"]]).order_by(products_t.c[p["productCode"]])
                    )
                    .scalars()
                    .all()
                )
    finally:
        engine.dispose()
    customers = [
        CustomerRow(
            customer_number=int(number),
            city=city,
            country=country,
            credit_limit=float(limit) if limit is not None else None,
        )
        for number, city, country, limit in rows
    ]
    return Catalog(customers=customers, product_codes=[str(code) for code in codes])
