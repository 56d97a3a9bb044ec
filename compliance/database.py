"""The customer's rows in PostgreSQL: found, deleted in one transaction; suppression; the audit.

Tables searched (all in the connection's current schema):

- ``latest_recommendations`` (the consumer's per-customer state, read by the API);
- every per-version user-vector table (``user_emb__<tag>``): the ones ``model_versions`` names and
  any other base table of that name pattern (a half-dropped version), because an old version can be
  re-activated by a switch without a reload; ``model_versions.users`` is kept equal to the row count;
- any other base table with a ``customer_number`` / ``customernumber`` column (state tables added
  later are covered without changing this module), except the compliance tables themselves.

The lab's ``user_emb`` view reads the active version's table, so it is covered by the table.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from compliance.report import Change, ForgetReport

__all__ = ["insert_audit", "is_suppressed", "pg_changes", "suppress"]

_OWN_TABLES = ("suppressed_customers", "forget_audit", "schema_migrations")
_USER_TABLE = r"user\_emb\_\_%"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _targets(conn: asyncpg.Connection[Any]) -> list[tuple[str, str, bool]]:
    """(table, key column, is a user-vector table), each once, in a stable order."""
    found: dict[str, tuple[str, str, bool]] = {}
    has_versions = await conn.fetchval("SELECT to_regclass('model_versions') IS NOT NULL")
    if has_versions:
        for row in await conn.fetch("SELECT user_table FROM model_versions ORDER BY version"):
            name = str(row["user_table"])
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _ident(name)):
                found[name] = (name, "id", True)
    for row in await conn.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname LIKE $1
           ORDER BY c.relname""",
        _USER_TABLE,
    ):
        name = str(row["relname"])
        found.setdefault(name, (name, "id", True))
    for row in await conn.fetch(
        """SELECT c.table_name, c.column_name FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
             AND lower(c.column_name) IN ('customer_number', 'customernumber')
             AND NOT (c.table_name = ANY($1::text[]))
           ORDER BY c.table_name""",
        list(_OWN_TABLES),
    ):
        name = str(row["table_name"])
        found.setdefault(name, (name, str(row["column_name"]), False))
    return list(found.values())


async def pg_changes(conn: asyncpg.Connection[Any], customer: int, *, apply: bool) -> list[Change]:
    """The customer's rows, table by table; with ``apply`` they are deleted, all in one transaction."""
    changes: list[Change] = []
    async with conn.transaction():
        for table, column, is_vectors in await _targets(conn):
            where = f"FROM {_ident(table)} WHERE {_ident(column)} = $1"
            if apply:
                status = await conn.execute(f"DELETE {where}", customer)
                rows = int(status.split()[-1])
            else:
                rows = int(await conn.fetchval(f"SELECT count(*) {where}", customer))
            if not rows:
                continue
            if apply and is_vectors:
                await conn.execute(
                    "UPDATE model_versions SET users = GREATEST(users - $2, 0) WHERE user_table = $1",
                    table,
                    rows,
                )
            kind = "user vectors of a model version" if is_vectors else f"rows keyed by {column}"
            verb = "deleted" if apply else "delete"
            changes.append(Change("postgres", table, rows, f"{verb} ({kind})"))
    return changes


async def is_suppressed(conn: asyncpg.Connection[Any], customer: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM suppressed_customers WHERE customer_number = $1)", customer
        )
    )


async def suppress(conn: asyncpg.Connection[Any], customer: int, actor: str) -> bool:
    """Add the customer to the suppression list; False when it was already there."""
    status = await conn.execute(
        "INSERT INTO suppressed_customers (customer_number, actor) VALUES ($1, $2) "
        "ON CONFLICT (customer_number) DO NOTHING",
        customer,
        actor,
    )
    return status.endswith(" 1")


async def insert_audit(conn: asyncpg.Connection[Any], report: ForgetReport, out_of_scope: list[str]) -> int:
    """One ``forget_audit`` row: who, when, which stores, counts. Never the deleted data."""
    stores = {s.store: s.to_json() for s in report.stores}
    audit_id = await conn.fetchval(
        """INSERT INTO forget_audit (customer_number, actor, started_at, suppressed, changed, stores,
                                     out_of_scope)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING id""",
        report.customer_number,
        report.actor,
        report.started_at,
        report.suppress,
        report.changed,
        orjson.dumps(stores).decode(),
        out_of_scope,
    )
    return int(audit_id)
