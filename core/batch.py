"""The pure steps of one batch of a shard: what to recommend, what to dead-letter, what to emit.

The shard worker (``consumer.shard``) acts; this module decides, with no I/O:

1. :func:`triage`: the records of a GetRecords page -> user records (KPL aggregates split by the
   injected splitter), the positions to register for checkpointing (those after the checkpoint the
   shard resumed from), the events to recommend for, the dead letters, and the positions of
   suppressed customers (skipped, never delivered);
2. :func:`answer_each`: the recommender's answers for a batch of requests, isolating by bisection the
   requests it refuses, so one bad request never fails the others;
3. :func:`finish`: each event with its answer -> the output record (the input event unchanged, plus
   the recommendation, ``event_id`` and ``processed_at``), encoded by the injected encoder and held to
   Firehose's record size, and the customer's latest-recommendations row.

**The per-record rule.** Whatever goes wrong while handling one record (split, decode, validate,
recommend, encode, size) makes a dead letter of *that* record, with its reason and position, and the
others go on: each step catches every ``Exception`` of one record, not only the ones foreseen (the
foreseen ones get a specific reason). Only :class:`~core.errors.InfraError` and
:class:`~core.errors.ModelNotReady` (a dependency is down, not the record) leave these functions;
the adapter retries those with backoff.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from core.checkpointing import Position, is_after
from core.deadletters import DeadLetter
from core.errors import BadRecord, DataRejected, InfraError, ModelNotReady
from core.events import BrowsingEvent, Loads, parse_event
from core.recommendations import LatestRow, Recommendation

__all__ = [
    "MAX_OUTPUT_BYTES",
    "Accepted",
    "Delivery",
    "Finished",
    "RawRecord",
    "Refusal",
    "SubRecord",
    "Triage",
    "UserRecord",
    "answer_each",
    "event_id",
    "finish",
    "output_record",
    "triage",
]

MAX_OUTPUT_BYTES = 1000 * 1024  # Firehose's limit per record
_DETAIL_CHARS = 200

Q = TypeVar("Q")
A = TypeVar("A")


class RawRecord(Protocol):
    """One record as Kinesis returned it (``consumer.kinesis.KinesisRecord``)."""

    @property
    def sequence(self) -> str: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def arrival(self) -> datetime | None: ...


class SubRecord(Protocol):
    """One user record of a record (``consumer.kpl.UserRecord``): a plain record is one, sub 0."""

    @property
    def partition_key(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def sub(self) -> int: ...


Splitter = Callable[[bytes, str], Sequence[SubRecord]]
"""Splits a record's bytes (and its partition key) into user records; raises ``BadRecord``."""
Encoder = Callable[[Mapping[str, Any]], bytes]
"""Encodes an output record as one JSON object (no newline); may raise on what it cannot encode."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user record at its position in the shard."""

    position: Position
    partition_key: str
    data: bytes
    arrival: datetime | None
    aggregated: bool

    def dead(self, shard_id: str, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(
            shard_id,
            self.position,
            reason,
            detail[:_DETAIL_CHARS],
            self.data,
            self.partition_key,
            self.arrival,
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event to recommend for."""

    record: UserRecord
    event: BrowsingEvent


@dataclass(slots=True)
class Triage:
    """What :func:`triage` decided about one page of records."""

    positions: list[Position] = field(default_factory=list)  # to register, in shard order
    accepted: list[Accepted] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    suppressed: list[Position] = field(default_factory=list)  # done: never delivered
    records_in: int = 0  # user records read (an aggregate that does not split counts as one)


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]


def triage(
    records: Sequence[RawRecord],
    *,
    shard_id: str,
    after: Position | None,
    split: Splitter,
    is_aggregated: Callable[[bytes], bool],
    suppressed: Callable[[int], bool] | None = None,
    loads: Loads = json.loads,
) -> Triage:
    """Split, decode (with ``loads``, see :func:`~core.events.parse_event`) and validate a page.
    Positions covered by ``after`` (the checkpoint the shard resumed from) are skipped; a record
    that cannot be split is dead-lettered whole (sub 0)."""
    out = Triage()
    for rec in records:
        aggregated = is_aggregated(rec.data)
        try:
            users = split(rec.data, rec.partition_key)
        except Exception as exc:  # noqa: BLE001 - the per-record boundary
            whole = UserRecord(
                Position(rec.sequence, 0), rec.partition_key, rec.data, rec.arrival, aggregated
            )
            if is_after(whole.position, after):
                reason, detail = (
                    (exc.reason, exc.detail)
                    if isinstance(exc, BadRecord)
                    else ("bad_aggregate", _failure(exc))
                )
                out.positions.append(whole.position)
                out.dead.append(whole.dead(shard_id, reason, detail))
                out.records_in += 1
            continue
        for user in users:
            item = UserRecord(
                Position(rec.sequence, user.sub), user.partition_key, user.data, rec.arrival, aggregated
            )
            if not is_after(item.position, after):
                continue  # covered by the checkpoint we resumed from
            out.positions.append(item.position)
            out.records_in += 1
            try:
                event = parse_event(item.data, loads)
            except BadRecord as exc:
                out.dead.append(item.dead(shard_id, exc.reason, exc.detail))
                continue
            except Exception as exc:  # noqa: BLE001 - the per-record boundary: anything unforeseen
                out.dead.append(item.dead(shard_id, "unreadable", _failure(exc)))
                continue
            if suppressed is not None and suppressed(event.customer_number):
                out.suppressed.append(item.position)
            else:
                out.accepted.append(Accepted(item, event))
    return out


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one request of a batch got no answer (it is dead-lettered with this reason)."""

    reason: str
    detail: str


async def answer_each(
    requests: Sequence[Q],
    call: Callable[[Sequence[Q]], Awaitable[Sequence[A]]],
    *,
    reason: str,
) -> list[A | Refusal]:
    """``call``'s answers for ``requests``, in order; a request ``call`` refuses gets a
    :class:`Refusal` with ``reason`` instead, found by bisection.

    One call answers the whole batch when nothing is wrong. When a call fails with anything but an
    infrastructure error (``DataRejected``, a bug triggered by one request, a wrong answer count),
    each half is asked again, down to single requests: ``2 * log2(n)`` extra calls per bad request.
    ``InfraError`` and ``ModelNotReady`` propagate (``call`` should retry those itself).
    """
    if not requests:
        return []
    try:
        got: list[A | Refusal] = [*await call(requests)]
        if len(got) != len(requests):
            raise DataRejected(f"{len(got)} answers for {len(requests)} requests")
        return got
    except (InfraError, ModelNotReady):
        raise
    except Exception as exc:  # noqa: BLE001 - isolate the request at fault
        if len(requests) == 1:
            detail = str(exc) if isinstance(exc, DataRejected) else _failure(exc)
            return [Refusal(reason, detail[:_DETAIL_CHARS])]
    middle = len(requests) // 2
    return [
        *await answer_each(requests[:middle], call, reason=reason),
        *await answer_each(requests[middle:], call, reason=reason),
    ]


def event_id(shard_id: str, position: Position, aggregated: bool) -> str:
    """``<shard id>:<sequence number>[:<sub-sequence>]`` — the same on every replay."""
    base = f"{shard_id}:{position.sequence}"
    return f"{base}:{position.sub}" if aggregated else base


def output_record(
    event: BrowsingEvent, answer: Recommendation, eid: str, processed_at: str
) -> dict[str, Any]:
    """The recommendation record (DESIGN.md): the input event unchanged, plus the lab's keys."""
    return {**event.raw, **answer.to_json(), "event_id": eid, "processed_at": processed_at}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One output record ready for Firehose (``payload`` ends in a newline) and its latest row."""

    record: UserRecord
    payload: bytes
    row: LatestRow


@dataclass(slots=True)
class Finished:
    deliveries: list[Delivery] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def finish(
    accepted: Sequence[Accepted],
    answers: Sequence[Recommendation | Refusal],
    *,
    shard_id: str,
    now: datetime,
    encode: Encoder,
) -> Finished:
    """Each event with its answer -> an output record within ``MAX_OUTPUT_BYTES`` and its latest
    row, or a dead letter: ``answers``' refusals, ``unencodable`` (the encoder refused the record,
    e.g. a lone surrogate or an integer beyond 64 bits in a field we pass through) and
    ``result_too_large``."""
    out = Finished()
    processed_at = now.isoformat()
    for item, answer in zip(accepted, answers, strict=True):
        rec = item.record
        if isinstance(answer, Refusal):
            out.dead.append(rec.dead(shard_id, answer.reason, answer.detail))
            continue
        eid = event_id(shard_id, rec.position, rec.aggregated)
        try:
            payload = encode(output_record(item.event, answer, eid, processed_at)) + b"\n"
        except Exception as exc:  # noqa: BLE001 - the per-record boundary
            out.dead.append(rec.dead(shard_id, "unencodable", _failure(exc)))
            continue
        if len(payload) > MAX_OUTPUT_BYTES:
            detail = f"{len(payload)} bytes exceed Firehose's {MAX_OUTPUT_BYTES}"
            out.dead.append(rec.dead(shard_id, "result_too_large", detail))
            continue
        event_time = item.event.event_time or rec.arrival or now
        row = LatestRow(item.event.customer_number, answer, eid, event_time, now)
        out.deliveries.append(Delivery(rec, payload, row))
    return out
