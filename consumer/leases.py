"""Shard leases and checkpoints in PostgreSQL (table ``kinesis_leases``, migration 0210).

Every write is conditional on the lease counter the writer last saw (optimistic concurrency, as the
KCL does on DynamoDB): take, renew, checkpoint and release succeed only if nobody else moved the
lease in between, so two workers never both believe they hold a shard. A held lease's counter and
its writes are serialised by a per-lease lock (renewals and checkpoints come from different tasks).

A planned move is a *handoff* (migration 0220): the worker that wants a lease writes its name in
``handoff_to`` (:meth:`PgLeaseTable.request_handoff`, the counter untouched, so the owner keeps
it); the owner sees the request in its next renewal, finishes its batch and writes its last
checkpoint and ``owner = handoff_to`` in one conditional update (:meth:`PgLeaseTable.hand_over`);
the new owner finds the row in its own renewal and starts exactly at that checkpoint. Nothing is read
twice. Only a lease whose owner stopped renewing (kill -9, a partition) is *taken* without the owner's
consent, and then the batch in flight may be delivered again (same ``event_id``).

A renewal round is one statement for every lease the worker holds (:meth:`PgLeaseTable.renew_all`,
through the ``(stream, owner)`` index): it bumps the counters, writes each shard's records/s and
the worker's CPU, and returns the worker's rows (handoff requests and leases handed to it included).

The decisions (what is expired, what to take or request) are the pure ``core.leases``; this
module only reads and writes rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.checkpointing import SHARD_END, TRIM_HORIZON, Position
from core.errors import DatabaseUnavailable, LeaseLost, RecsysError
from core.leases import LeaseView

__all__ = ["CHANNEL", "HeldLease", "LeaseRow", "PgLeaseTable", "Renewal"]

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
    handoff_to: str | None = None
    load_rps: float = 0.0
    owner_cpu: float | None = None

    def view(self) -> LeaseView:
        return LeaseView(
            self.shard_id,
            self.owner,
            self.counter,
            self.ended,
            self.parents,
            handoff_to=self.handoff_to,
            load=self.load_rps,
            owner_cpu=self.owner_cpu,
        )


@dataclass(slots=True)
class HeldLease:
    """A lease this worker holds: the counter it must present, and where the shard resumes."""

    shard_id: str
    counter: int
    checkpoint_seq: str | None
    checkpoint_sub: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: bool = False
    records_in: int = 0  # user records read from the shard (the worker counts, renewals turn it into a rate)
    handoff_to: str | None = None  # the worker that asked for this lease (seen in a renewal)
    unrecorded: Position | None = None  # acknowledged past the last checkpoint when the worker stopped

    @property
    def checkpoint(self) -> Position | None:
        """The last handled position, or ``None`` when the shard starts at a sentinel position."""
        if self.checkpoint_seq is None or self.checkpoint_seq in (TRIM_HORIZON, SHARD_END):
            return None
        return Position(self.checkpoint_seq, self.checkpoint_sub)


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one renewal round found: leases lost, handoffs requested, leases handed to us."""

    lost: tuple[HeldLease, ...] = ()
    requested: tuple[tuple[HeldLease, str], ...] = ()  # (our lease, the worker asking for it)
    adopted: tuple[HeldLease, ...] = ()  # rows owned by us that we did not hold (handed over to us)


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
        handoff_to=rec["handoff_to"],
        load_rps=float(rec["load_rps"]),
        owner_cpu=None if rec["owner_cpu"] is None else float(rec["owner_cpu"]),
    )


CHANNEL = "kinesis_leases"  # NOTIFY payload: "<stream>|<released|requested|handed>|<worker or empty>"


class PgLeaseTable:
    """The lease rows of one stream, as seen by worker ``worker_id``.

    With ``listen_url``, :meth:`listen` holds one connection of its own (not the pool's) on
    ``LISTEN kinesis_leases``: a release, a handoff request and a handover each send a notification
    in the statement that makes them, so the workers concerned act at once instead of at their next
    take round or renewal. Without it (or while that connection is down) the rounds alone do it."""

    def __init__(
        self, pool: asyncpg.Pool[Any], stream: str, worker_id: str, *, listen_url: str | None = None
    ) -> None:
        self._pool = pool
        self.stream = stream
        self.worker_id = worker_id
        self._listen_url = listen_url
        self._listener: asyncpg.Connection[Any] | None = None

    async def listen(self, on_event: Callable[[str, str], None]) -> bool:
        """Call ``on_event(kind, worker)`` for this stream's lease notifications; True while
        listening (False without ``listen_url``). Idempotent; call again after a failure."""
        if self._listen_url is None:
            return False
        if self._listener is not None and not self._listener.is_closed():
            return True
        from infra.pg import connect

        prefix = self.stream + "|"

        def deliver(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            if isinstance(payload, str) and payload.startswith(prefix):
                kind, _, worker = payload[len(prefix) :].partition("|")
                on_event(kind, worker)

        try:
            conn = await connect(self._listen_url)
            await conn.add_listener(CHANNEL, deliver)
        except (*_ERRORS, RecsysError) as exc:
            raise DatabaseUnavailable(f"listening for lease notifications failed: {exc}") from exc
        self._listener = conn
        return True

    async def close(self) -> None:
        """Stop listening (the pool is the caller's)."""
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*_ERRORS):
                await conn.close(timeout=5)

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
        """Give the lease up now so a successor can take it at once. False if it was already gone.

        ``lease.unrecorded`` (what the worker acknowledged past its last checkpoint) is written in
        the same update, so the successor starts exactly after the last delivered record."""
        async with lease.lock:
            if lease.lost:
                return False
            seq, sub = _position(lease.unrecorded)
            rows = await self._execute(
                "releasing a lease",
                """UPDATE kinesis_leases SET owner = NULL, lease_counter = lease_counter + 1,
                       handoff_to = NULL,
                       checkpoint_seq = COALESCE($5, checkpoint_seq),
                       checkpoint_sub = CASE WHEN $5::text IS NULL THEN checkpoint_sub ELSE $6 END
                   WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4
                   RETURNING shard_id, pg_notify($7, $1 || '|released|')""",
                self.stream,
                lease.shard_id,
                self.worker_id,
                lease.counter,
                seq,
                sub,
                CHANNEL,
            )
            lease.lost = True
            return bool(rows)

    async def renew_all(
        self, leases: Sequence[HeldLease], loads: Mapping[str, float], cpu: float | None
    ) -> Renewal:
        """Renew every lease this worker holds in one statement (the ``(stream, owner)`` index).

        Writes each shard's records/s (``loads``) and the worker's CPU (None until warmed up).
        A held lease whose row is no longer ours is marked lost; a row that is ours but not held
        (handed over to us) is returned as adopted, at its new counter and checkpoint."""
        live = sorted((x for x in leases if not x.lost), key=lambda x: x.shard_id)
        async with contextlib.AsyncExitStack() as locks:
            for lease in live:
                await locks.enter_async_context(lease.lock)
            ids = [x.shard_id for x in live]
            rows = await self._execute(
                "renewing leases",
                """UPDATE kinesis_leases SET lease_counter = lease_counter + 1, renewed_at = now(),
                       load_rps = COALESCE(($4::float8[])[array_position($3::text[], shard_id)], load_rps),
                       owner_cpu = $5
                   WHERE stream = $1 AND owner = $2
                   RETURNING shard_id, lease_counter, checkpoint_seq, checkpoint_sub, ended, handoff_to""",
                self.stream,
                self.worker_id,
                ids,
                [loads.get(i) for i in ids],
                cpu,
            )
            found = {r["shard_id"]: r for r in rows}
            lost: list[HeldLease] = []
            requested: list[tuple[HeldLease, str]] = []
            adopted: list[HeldLease] = []
            for lease in live:
                rec = found.pop(lease.shard_id, None)
                if rec is None or int(rec["lease_counter"]) - 1 != lease.counter:
                    lease.lost = True
                    lost.append(lease)
                    if rec is None:
                        continue
                else:
                    lease.counter = int(rec["lease_counter"])
                    to = rec["handoff_to"]
                    if to is not None and to != self.worker_id:
                        lease.handoff_to = to
                        requested.append((lease, to))
                    continue
                found[lease.shard_id] = rec  # ours again at another counter: adopt it afresh
            for rec in found.values():
                if not rec["ended"]:
                    adopted.append(
                        HeldLease(
                            rec["shard_id"],
                            int(rec["lease_counter"]),
                            rec["checkpoint_seq"],
                            int(rec["checkpoint_sub"]),
                        )
                    )
        return Renewal(tuple(lost), tuple(requested), tuple(adopted))

    async def request_handoff(self, observed: LeaseView) -> bool:
        """Ask the owner of ``observed`` to hand the lease to us. False when it moved, ended or
        someone else asked first. The counter is untouched: the owner keeps reading until it hands over."""
        rows = await self._execute(
            "requesting a handoff",
            """UPDATE kinesis_leases SET handoff_to = $3, handoff_at = now()
               WHERE stream = $1 AND shard_id = $2 AND owner = $4 AND handoff_to IS NULL AND NOT ended
               RETURNING shard_id, pg_notify($5, $1 || '|requested|' || owner)""",
            self.stream,
            observed.shard_id,
            self.worker_id,
            observed.owner,
            CHANNEL,
        )
        return bool(rows)

    async def cancel_requests(self) -> int:
        """Withdraw this worker's pending handoff requests (it is stopping); how many there were."""
        rows = await self._execute(
            "withdrawing handoff requests",
            """UPDATE kinesis_leases SET handoff_to = NULL
               WHERE stream = $1 AND handoff_to = $2 AND owner IS DISTINCT FROM $2
               RETURNING shard_id""",
            self.stream,
            self.worker_id,
        )
        return len(rows)

    async def hand_over(self, lease: HeldLease) -> float | None:
        """Write ``lease.unrecorded`` as the checkpoint and ``owner = handoff_to`` in one conditional
        update. Returns the seconds since the request (the database's clock), or None when the
        lease was no longer ours or nobody asked for it (then the caller releases it)."""
        async with lease.lock:
            if lease.lost:
                return None
            seq, sub = _position(lease.unrecorded)
            rows = await self._execute(
                "handing a lease over",
                """UPDATE kinesis_leases SET owner = handoff_to, handoff_to = NULL,
                       lease_counter = lease_counter + 1, renewed_at = now(),
                       owner_switches = owner_switches + 1,
                       checkpoint_seq = COALESCE($5, checkpoint_seq),
                       checkpoint_sub = CASE WHEN $5::text IS NULL THEN checkpoint_sub ELSE $6 END
                   WHERE stream = $1 AND shard_id = $2 AND owner = $3 AND lease_counter = $4
                     AND handoff_to IS NOT NULL
                   RETURNING extract(epoch FROM now() - handoff_at)::float8 AS waited,
                             pg_notify($7, $1 || '|handed|' || owner)""",
                self.stream,
                lease.shard_id,
                self.worker_id,
                lease.counter,
                seq,
                sub,
                CHANNEL,
            )
            if not rows:
                return None
            lease.lost = True
            return float(rows[0]["waited"] or 0.0)


def _position(position: Position | None) -> tuple[str | None, int]:
    return (None, 0) if position is None else (position.sequence, position.sub)
