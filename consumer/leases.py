"""Shard leases and checkpoints in PostgreSQL (table ``kinesis_leases``, migration 0210).

Every write is conditional on the lease counter the writer last saw (optimistic concurrency, as the
KCL does on DynamoDB): take, renew, checkpoint and release succeed only if nobody else moved the
lease in between, so two workers never both believe they hold a shard. A held lease's counter and
its writes are serialised by a per-lease lock (renewals and checkpoints come from different tasks).

The decisions (what is expired, what to take or steal) are the pure ``core.leases``; this
module only reads and writes rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.checkpointing import SHARD_END, TRIM_HORIZON, Position
from core.errors import DatabaseUnavailable, LeaseLost
from core.leases import LeaseView

__all__ = ["HeldLease", "LeaseRow", "PgLeaseTable"]

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclass(frozen=True, slots=True)
class LeaseRow:
    shard_id: str
    owner: str | None
    counter: int
    checkpoint_seq: str | None
    checkpoint_sub: int
    parents: tuple[str, ...]
    ended: bool
    owner_switches: int

    def view(self) -> LeaseView:
        return LeaseView(self.shard_id, self.owner, self.counter, self.ended, self.parents)


@dataclass(slots=True)
class HeldLease:
    """A lease this worker holds: the counter it must present, and where the shard resumes."""

    shard_id: str
    counter: int
    checkpoint_seq: str | None
    checkpoint_sub: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: bool = False

    @property
    def checkpoint(self) -> Position | None:
        """The last handled position, or ``None`` when the shard starts at a sentinel position."""
        if self.checkpoint_seq is None or self.checkpoint_seq in (TRIM_HORIZON, SHARD_END):
            return None
        return Position(self.checkpoint_seq, self.checkpoint_sub)


def _row(rec: asyncpg.Record) -> LeaseRow:
    return LeaseRow(
        shard_id=rec["shard_id"],
        owner=rec["owner"],
        counter=int(rec["lease_counter"]),
        checkpoint_seq=rec["checkpoint_seq"],
        checkpoint_sub=int(rec["checkpoint_sub"]),
        parents=tuple(rec["parent_shard_ids"]),
        ended=bool(rec["ended"]),
        owner_switches=int(rec["owner_switches"]),
    )


class PgLeaseTable:
    """The lease rows of one stream, as seen by worker ``worker_id``."""

    def __init__(self, pool: asyncpg.Pool[Any], stream: str, worker_id: str) -> None:
        self._pool = pool
        self.stream = stream
        self.worker_id = worker_id

    async def _execute(self, what: str, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args, timeout=10.0)
        except _ERRORS as exc:
            raise DatabaseUnavailable(f"{what} failed: {exc}") from exc
        return rows

    async def add_shards(self, shards: Sequence[tuple[str, Sequence[str]]]) -> int:
        """Insert missing rows for ``(shard_id, parent ids)``; return how many were new.

        A shard whose parent is in the table or in this call starts at ``TRIM_HORIZON`` (a child must
        be read from its beginning); the others start at the consumer's initial position (NULL).
        """
        if not shards:
            return 0
        ids = [s for s, _ in shards]
        listed = set(ids)
        known = {
            r["shard_id"]
            for r in await self._execute(
                "reading leases", "SELECT shard_id FROM kinesis_leases WHERE stream = $1", self.stream
            )
        }
        starts = [
            TRIM_HORIZON if any(p in listed or p in known for p in parents) else None for _, parents in shards
        ]
        rows = await self._execute(
            "adding leases",
            """INSERT INTO kinesis_leases (stream, shard_id, parent_shard_ids, checkpoint_seq)
               SELECT $1, s.id, string_to_array(s.parents, ','), s.start
               FROM unnest($2::text[], $3::text[], $4::text[]) AS s(id, parents, start)
               ON CONFLICT (stream, shard_id) DO NOTHING
               RETURNING shard_id""",
            self.stream,
            ids,
            [",".join(parents) for _, parents in shards],
            starts,
        )
        return len(rows)

    async def list(self) -> list[LeaseRow]:
        return [
            _row(r)
            for r in await self._execute(
                "reading leases",
                "SELECT * FROM kinesis_leases WHERE stream = $1 ORDER BY shard_id",
                self.stream,
            )
        ]

    async def take(self, observed: LeaseView) -> HeldLease | None:
        """Take (or steal) a lease at the counter we observed; ``None`` if someone moved it first."""
        rows = await self._execute(
            "taking a lease",
            """UPDATE kinesis_leases
               SET owner = $3, lease_counter = lease_counter + 1, renewed_at = now(),
                   owner_switches = owner_switches + 1
               WHERE stream = $1 AND shard_id = $2 AND lease_counter = $4 AND NOT ended
               RETURNING lease_counter, checkpoint_seq, checkpoint_sub""",
            self.stream,
            observed.shard_id,
            self.worker_id,
            observed.counter,
        )
        if not rows:
            return None
        rec = rows[0]
        return HeldLease(
            observed.shard_id, int(rec["lease_counter"]), rec["checkpoint_seq"], int(rec["checkpoint_sub"])
        )

    async def renew(self, lease: HeldLease) -> None:
        """Bump the counter (liveness). Raises ``LeaseLost`` if another worker moved the lease."""
        async with lease.lock:
            if lease.lost:
                raise LeaseLost(f"lease on {lease.shard_id} was lost")
            rows = await self._execute(
                "renewing a lease",
                """UPDATE kinesis_leases SET lease_counter = lease_counter + 1, renewed_at = now()
                   WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4
                   RETURNING lease_counter""",
                self.stream,
                lease.shard_id,
                self.worker_id,
                lease.counter,
            )
            if not rows:
                lease.lost = True
                raise LeaseLost(f"lease on {lease.shard_id} was taken by another worker")
            lease.counter = int(rows[0]["lease_counter"])

    async def checkpoint(
        self, lease: HeldLease, position: Position | None, *, shard_end: bool = False
    ) -> None:
        """Record ``position`` (or SHARD_END). Raises ``LeaseLost`` if we no longer hold the lease."""
        seq = SHARD_END if shard_end else (position.sequence if position else None)
        sub = 0 if shard_end or position is None else position.sub
        if seq is None:
            return
        async with lease.lock:
            if lease.lost:
                raise LeaseLost(f"lease on {lease.shard_id} was lost")
            rows = await self._execute(
                "checkpointing",
                """UPDATE kinesis_leases SET checkpoint_seq = $5, checkpoint_sub = $6, ended = $7
                   WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4
                   RETURNING shard_id""",
                self.stream,
                lease.shard_id,
                self.worker_id,
                lease.counter,
                seq,
                sub,
                shard_end,
            )
            if not rows:
                lease.lost = True
                raise LeaseLost(f"lease on {lease.shard_id} was taken by another worker")
            lease.checkpoint_seq, lease.checkpoint_sub = seq, sub

    async def release(self, lease: HeldLease) -> bool:
        """Give the lease up now so a successor can take it at once. False if it was already gone."""
        async with lease.lock:
            if lease.lost:
                return False
            rows = await self._execute(
                "releasing a lease",
                """UPDATE kinesis_leases SET owner = NULL, lease_counter = lease_counter + 1
                   WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4
                   RETURNING shard_id""",
                self.stream,
                lease.shard_id,
                self.worker_id,
                lease.counter,
            )
            lease.lost = True
            return bool(rows)
