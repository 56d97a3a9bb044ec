"""What a forget run found or changed, store by store: plain data, printable, storable in the audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["OUT_OF_SCOPE", "Change", "ForgetReport", "StoreResult"]

# Said on every run: what the command does not (and must not) touch, and what follows from that.
OUT_OF_SCOPE = (
    "the shop's source database (customers, ratings) is the shop's and is not changed here: delete the "
    "customer there too, or suppress them (--suppress: `recsys etl` leaves them out), or the next "
    "`recsys etl` brings the customer back into the lake",
    "the model weights and the item embeddings hold no per-customer rows (they are functions of "
    "content features); the next `recsys train` no longer sees the customer's ratings",
    "process logs are not rewritten: the product logs route templates, shards and counts, not customer "
    "numbers (DEBUG access lines excepted)",
)


@dataclass(frozen=True, slots=True)
class Change:
    """One table or object that holds (dry run) or held (real run) the customer's data."""

    store: str  # postgres | artifacts | lake | delivery | dead_letters
    target: str  # a table, an object key, a run
    rows: int  # rows, lines or records of the customer
    action: str  # what the real run does/did to it


@dataclass(slots=True)
class StoreResult:
    store: str
    where: str  # the URI or database that was checked ("" when skipped)
    status: str = "checked"  # checked | skipped: <why> | empty
    changes: list[Change] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rows": self.rows,
            "objects": len(self.changes),
            "targets": sorted({c.target for c in self.changes}),
        }


@dataclass(slots=True)
class ForgetReport:
    customer_number: int
    dry_run: bool
    suppress: bool
    actor: str
    started_at: datetime
    stores: list[StoreResult] = field(default_factory=list)
    newly_suppressed: bool = False
    audit_id: int | None = None

    @property
    def changes(self) -> list[Change]:
        return [c for s in self.stores for c in s.changes]

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.newly_suppressed

    @property
    def skipped(self) -> list[StoreResult]:
        return [s for s in self.stores if s.status.startswith("skipped")]

    def lines(self) -> list[str]:
        """The command's output: one line per change, then the verdict and what is out of scope."""
        who = f"customer {self.customer_number}"
        out = [f"{'DRY RUN: would forget' if self.dry_run else 'forget'} {who} (actor: {self.actor})"]
        for store in self.stores:
            head = f"  {store.store:<13} {store.where or '-'}"
            if store.status != "checked":
                out.append(f"{head}  [{store.status}]")
            elif not store.changes:
                out.append(f"{head}  nothing of {who}")
            else:
                out.append(f"{head}  {store.rows} row(s) in {len(store.changes)} place(s)")
            for change in store.changes:
                out.append(f"      {change.target}: {change.rows} row(s) -> {change.action}")
        if self.suppress:
            if self.dry_run:
                out.append(f"  suppression   would add {who} to suppressed_customers (if not there yet)")
            else:
                state = "added to" if self.newly_suppressed else "already in"
                out.append(
                    f"  suppression   {who} {state} suppressed_customers (its later events are to be dropped)"
                )
        if self.dry_run:
            out.append("dry run: nothing was changed")
        elif not self.changed:
            out.append(f"nothing left to forget: no store holds data of {who}; nothing was changed")
        else:
            out.append(f"done: {len(self.changes)} table(s)/object(s) changed")
        if self.audit_id is not None:
            out.append(f"audit record forget_audit.id = {self.audit_id}")
        for store in self.skipped:
            out.append(f"WARNING: {store.store} was not checked ({store.status})")
        out.extend(f"out of scope: {note}" for note in OUT_OF_SCOPE)
        return out
