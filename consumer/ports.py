"""The consumer's ports: what the coordinator and the shard workers need from the outside world.

Each is a ``typing.Protocol`` whose docstrings state the rules every implementation keeps. The
real adapters are ``consumer.kinesis.KinesisReader``, ``consumer.leases.PgLeaseTable``,
``consumer.sink.FirehoseSink``, ``consumer.deadletters.DeadLetterStore`` and
``infra.suppression.SuppressionList``; the recommender and the latest-recommendations store are
``core.ports``'. In-memory doubles of all of them, typed as these Protocols (mypy checks them), are
in ``recsys.testing``.

Errors: implementations raise only ``core.errors`` types; infrastructure failures are
``InfraError``\\ s (retried with backoff by the caller), ``LeaseLost`` is final for that lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from consumer.kinesis import RecordsPage, ShardInfo, StartAt
from consumer.leases import HeldLease, LeaseRow, Renewal
from core.checkpointing import Position
from core.deadletters import DeadLetter
from core.leases import LeaseView

__all__ = ["DeadLetterSink", "LeaseTable", "RecordReader", "RecordSink", "Suppression"]

K = TypeVar("K")


class RecordReader(Protocol):
    """The reads of one Kinesis stream (ListShards, GetShardIterator, GetRecords)."""

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard of the stream, open and closed, with its parents. Raises ``NotFoundError``
        when the stream does not exist (a configuration mistake), ``AwsError`` otherwise."""
        ...

    async def iterator(self, shard_id: str, start: StartAt) -> str:
        """An iterator at ``start``. ``AT_SEQUENCE_NUMBER`` *includes* that record: the caller skips
        what its checkpoint covers (so a half-handled KPL aggregate resumes at the right sub-record)."""
        ...

    async def get_records(self, iterator: str, limit: int) -> RecordsPage:
        """At most ``limit`` records after ``iterator``, in shard order. ``next_iterator`` is
        ``None`` once a closed shard is read to its end (SHARD_END); ``child_shards`` names the
        shards that replace it. Raises ``IteratorExpired`` (re-acquire from the last handled
        record), ``Throttled`` (back off), ``AwsError``. Never more than five calls per second per
        shard: pacing is the caller's."""
        ...


class LeaseTable(Protocol):
    """The shard leases of one stream as worker ``worker_id`` sees them.

    Every write (take, renew, checkpoint, release) is conditional on the lease counter the writer
    last saw, so two workers never both hold a shard: a write that finds the counter moved raises
    ``LeaseLost`` and marks the lease lost. ``DatabaseUnavailable`` when the table cannot be reached
    (the lease is not lost: retry later).
    """

    @property
    def worker_id(self) -> str:
        """Who this table writes as (unique per process)."""
        ...

    async def add_shards(self, shards: Sequence[tuple[str, Sequence[str]]]) -> int:
        """Insert rows for new ``(shard id, parent ids)``; a child of a known shard starts at
        TRIM_HORIZON. Returns how many were new. Idempotent."""
        ...

    async def list(self) -> list[LeaseRow]:
        """Every lease row of the stream, in shard-id order."""
        ...

    async def take(self, observed: LeaseView) -> HeldLease | None:
        """Take (or steal) the lease at the counter ``observed`` (a ``LeaseView``); ``None`` when
        another worker moved it first."""
        ...

    async def renew(self, lease: HeldLease) -> None:
        """Bump the counter (liveness). Raises ``LeaseLost`` if another worker moved it."""
        ...

    async def renew_all(
        self, leases: Sequence[HeldLease], loads: Mapping[str, float], cpu: float | None
    ) -> Renewal:
        """Renew every lease this worker holds at once, reading only the worker's own rows; write
        each shard's records/s (``loads``; a shard not in it keeps its last figure) and the worker's
        CPU. Held leases no longer ours come back as lost (marked lost), handoff requests on ours as
        requested, rows handed over to us as adopted (new held leases)."""
        ...

    async def request_handoff(self, observed: LeaseView) -> bool:
        """Ask the owner of ``observed`` to hand it over (its counter untouched); False when it
        moved, ended, or another worker asked first."""
        ...

    async def cancel_requests(self) -> int:
        """Withdraw this worker's pending handoff requests; how many there were."""
        ...

    async def hand_over(self, lease: HeldLease) -> float | None:
        """Checkpoint at ``lease.unrecorded`` and make the requester the owner, in one conditional
        write; the seconds since the request, or None when the lease was not ours any more or the
        request was withdrawn. The lease is unusable afterwards."""
        ...

    async def checkpoint(
        self, lease: HeldLease, position: Position | None, *, shard_end: bool = False
    ) -> None:
        """Record that every record up to ``position`` (or the whole shard: ``shard_end``) is
        handled. The caller never passes a record that is not acknowledged. Raises ``LeaseLost``."""
        ...

    async def listen(self, on_event: Callable[[str, str], None]) -> bool:
        """Call ``on_event(kind, worker)`` when a lease of the stream is ``released``, ``requested``
        from ``worker`` or ``handed`` to ``worker``, as soon as it happens; False when this table
        cannot tell (then the coordinator's rounds alone find out). Raises ``DatabaseUnavailable``."""
        ...

    async def close(self) -> None:
        """Stop listening."""
        ...

    async def release(self, lease: HeldLease) -> bool:
        """Give the lease up at once (a successor need not wait for it to expire), writing
        ``lease.unrecorded`` as its checkpoint in the same update; False when it was no longer
        ours. The lease is unusable afterwards."""
        ...


class RecordSink(Protocol):
    """Where output records go (Firehose)."""

    async def deliver(self, items: Sequence[tuple[K, bytes]], on_ack: Callable[[K], None]) -> None:
        """Deliver every ``(key, payload)``; call ``on_ack(key)`` for each as soon as it is durably
        accepted, in any order. Returns only when all are acknowledged: failures are retried with
        backoff until then (only cancellation stops it), so a payload is never dropped. Each
        payload is one newline-terminated record of at most ``core.batch.MAX_OUTPUT_BYTES``."""
        ...


class DeadLetterSink(Protocol):
    """Where bad records go (``core.deadletters`` defines the format)."""

    async def put(self, letters: Sequence[DeadLetter]) -> None:
        """Store the letters durably before returning (a checkpoint may then pass them). Storing
        the same batch again (a replay) replaces it instead of duplicating it. Raises
        ``InfraError`` when the store fails; never fails on a letter's content."""
        ...


class Suppression(Protocol):
    """Customers whose events must not be processed (``recsys forget --suppress``)."""

    async def maybe_refresh(self) -> bool:
        """Re-read the list when it is due; keep the last one when the database fails (never
        raises for that). Cheap to call per batch. True when the list was re-read."""
        ...

    def contains(self, customer_number: int) -> bool:
        """True when the customer's events must be skipped. No I/O."""
        ...
