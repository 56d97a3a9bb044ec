"""``forget``: remove one customer from every store the product writes, or say what that would do.

Order: the suppression row first (when asked), so a consumer that has refreshed its list stops
writing new data while the stores are cleaned; then PostgreSQL (one transaction); then the artifact
store, the lake, the delivered records and the dead letters; then the audit row. Every step only
removes what is still there, so a run that crashed part-way is completed by running it again, and a
repeat run finds nothing and changes nothing (its audit row says ``changed = false``).

Deletion is not a block list: events of the customer that arrive later are processed as usual
unless ``suppress`` is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from compliance.database import insert_audit, is_suppressed, pg_changes, suppress
from compliance.lake import lake_changes
from compliance.objects import artifact_changes, dead_letter_changes, delivery_changes
from compliance.report import OUT_OF_SCOPE, Change, ForgetReport, StoreResult
from core.errors import ConfigError
from core.events import CUSTOMER_NUMBER_MAX
from infra.logs import get_logger
from infra.objectstore import ObjectStore, open_store
from infra.pg import connect

__all__ = ["Targets", "forget"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Targets:
    """Where the product's stores are. ``None``: not configured, reported as not checked."""

    database_url: str
    lake: str | None = None
    artifacts: str | None = None
    delivery: str | None = None
    dead_letters: str | None = None


ObjectStep = Callable[[ObjectStore, int], list[Change]]


def _object_store_step(name: str, uri: str | None, flag: str, run: ObjectStep, customer: int) -> StoreResult:
    if not uri:
        return StoreResult(name, "", status=f"skipped: {flag} not given")
    store = open_store(uri)
    return StoreResult(name, store.uri, changes=run(store, customer))


def _preflight(targets: Targets) -> None:
    """Reach every configured object store before anything changes (a typo fails the whole run)."""
    for uri in (targets.artifacts, targets.lake, targets.delivery, targets.dead_letters):
        if uri:
            next(iter(open_store(uri).list("")), None)


async def forget(
    customer: int, targets: Targets, *, actor: str, dry_run: bool = False, suppress_events: bool = False
) -> ForgetReport:
    """Forget ``customer`` everywhere (see the module docstring); returns what was found or done."""
    if not 0 <= customer <= CUSTOMER_NUMBER_MAX:
        shown = str(customer) if len(str(customer)) <= 30 else f"{str(customer)[:27]}..."
        raise ConfigError(f"a customer number is an integer in 0..{CUSTOMER_NUMBER_MAX}, got {shown}")
    apply = not dry_run
    report = ForgetReport(customer, dry_run, suppress_events, actor, datetime.now(UTC))
    await asyncio.to_thread(_preflight, targets)
    conn = await connect(targets.database_url)
    try:
        missing = await conn.fetchval(
            "SELECT to_regclass('forget_audit') IS NULL OR to_regclass('suppressed_customers') IS NULL"
        )
        if missing:
            raise ConfigError("the compliance tables are missing; run `recsys migrate` first")
        if suppress_events:
            if apply:
                report.newly_suppressed = await suppress(conn, customer, actor)
            else:
                report.newly_suppressed = not await is_suppressed(conn, customer)
        database = StoreResult("postgres", "tables with the customer's rows")
        database.changes = await pg_changes(conn, customer, apply=apply)
        report.stores.append(database)

        def object_steps() -> list[StoreResult]:
            return [
                _object_store_step(
                    "artifacts",
                    targets.artifacts,
                    "--artifacts",
                    lambda s, c: artifact_changes(s, c, apply=apply),
                    customer,
                ),
                _object_store_step(
                    "lake", targets.lake, "--lake", lambda s, c: lake_changes(s, c, apply=apply), customer
                ),
                _object_store_step(
                    "delivery",
                    targets.delivery,
                    "--delivery",
                    lambda s, c: delivery_changes(s, c, apply=apply),
                    customer,
                ),
                _object_store_step(
                    "dead_letters",
                    targets.dead_letters,
                    "--dead-letters",
                    lambda s, c: dead_letter_changes(s, c, apply=apply),
                    customer,
                ),
            ]

        report.stores.extend(await asyncio.to_thread(object_steps))
        if apply:
            report.audit_id = await insert_audit(conn, report, list(OUT_OF_SCOPE))
    finally:
        await asyncio.shield(conn.close())
    log.info(
        "forget finished",
        extra={
            "fields": {
                "dry_run": dry_run,
                "changes": len(report.changes),
                "skipped": [s.store for s in report.skipped],
                "audit_id": report.audit_id,
            }
        },
    )
    return report
