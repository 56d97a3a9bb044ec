"""Delivery to Firehose with ``PutRecordBatch``, enforcing Firehose's limits ourselves.

Limits (the real service's; emulators do not enforce them): at most 500 records and 4 MiB per call,
at most 1,000 KiB per record. Each output record (one event's) is one JSON object ending in a
newline, so the S3 objects Firehose writes are newline-delimited JSON, one line per event.

**Packing.** Firehose bills every record rounded up to 5 KB and its per-record work (request
validation, base64, the per-record answer) dominates a call, so consecutive output records are
concatenated into one Firehose record of up to ``pack_bytes`` (default: Firehose's 1,000 KiB;
``0`` = one event per Firehose record). Firehose writes a record's bytes to S3 as they are, so the
objects hold exactly the same lines as without packing. A packed record is one unit of delivery:
when Firehose accepts it, every event it carries is acknowledged; when Firehose rejects it, exactly
those events are resent (as the same record).

``deliver`` returns only when every record was acknowledged. Records Firehose rejects (a per-record
``ErrorCode``) are resent alone, after a capped, jittered backoff; a failed call (throttling, network)
is retried whole. Each acknowledgement is reported through ``on_ack`` as it happens, so a caller can
checkpoint a prefix. ``deliver`` retries until it succeeds or its task is cancelled (lease lost,
shutdown deadline): a record is never dropped.

Tests make Firehose fail on purpose by subclassing and overriding :meth:`FirehoseSink.put_batch`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from consumer import metrics
from core.batch import MAX_OUTPUT_BYTES
from core.errors import InfraError
from core.leases import backoff_delay
from infra.aws import map_client_error
from infra.logs import get_logger

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "MAX_RECORD_BYTES",
    "FirehoseSink",
    "Packed",
    "batches",
    "pack",
]

log = get_logger(__name__)

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_RECORD_BYTES = MAX_OUTPUT_BYTES  # core.batch holds output records to it (one definition)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Packed(Generic[T]):
    """One Firehose record: the keys of the output records it carries, in order, and their bytes."""

    keys: tuple[T, ...]
    data: bytes


def pack(items: Sequence[tuple[T, bytes]], limit: int = MAX_RECORD_BYTES) -> list[Packed[T]]:
    """Concatenate consecutive ``(key, payload)`` items into Firehose records of at most ``limit``
    bytes (at most ``MAX_RECORD_BYTES``); ``limit`` 0 gives one record per item. An item longer than
    ``limit`` (but within ``MAX_RECORD_BYTES``) is a record of its own."""
    limit = min(limit, MAX_RECORD_BYTES)
    out: list[Packed[T]] = []
    keys: list[T] = []
    parts: list[bytes] = []
    size = 0
    for key, payload in items:
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {len(payload)} bytes exceeds Firehose's {MAX_RECORD_BYTES}")
        if parts and size + len(payload) > limit:
            out.append(Packed(tuple(keys), b"".join(parts)))
            keys, parts, size = [], [], 0
        keys.append(key)
        parts.append(payload)
        size += len(payload)
    if parts:
        out.append(Packed(tuple(keys), b"".join(parts)))
    return out


def batches(items: Sequence[tuple[T, bytes]]) -> list[list[tuple[T, bytes]]]:
    """Split ``(key, Firehose record)`` items, in order, into PutRecordBatch-sized groups."""
    out: list[list[tuple[T, bytes]]] = []
    current: list[tuple[T, bytes]] = []
    size = 0
    for key, payload in items:
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {len(payload)} bytes exceeds Firehose's {MAX_RECORD_BYTES}")
        if current and (len(current) == MAX_BATCH_RECORDS or size + len(payload) > MAX_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append((key, payload))
        size += len(payload)
    if current:
        out.append(current)
    return out


class FirehoseSink:
    """Delivers newline-terminated records to one Firehose delivery stream (``consumer.ports.RecordSink``)."""

    def __init__(
        self,
        client: Any,
        delivery_stream: str,
        *,
        timeout_s: float = 10.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        rng: random.Random | None = None,
        max_in_flight: int = 4,
        pack_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._client = client
        self.delivery_stream = delivery_stream
        self._timeout_s = timeout_s
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._rng = rng or random.Random()
        self._pack_bytes = pack_bytes
        self.calls = 0  # PutRecordBatch calls made
        self.records = 0  # Firehose records sent (a resend counts again)
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def put_batch(self, payloads: Sequence[bytes]) -> list[str | None]:
        """One PutRecordBatch: per record ``None`` (accepted) or its ``ErrorCode``; raises on failure."""
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                response = await self._client.put_record_batch(
                    DeliveryStreamName=self.delivery_stream, Records=[{"Data": p} for p in payloads]
                )
        except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
            raise map_client_error(exc, f"PutRecordBatch to {self.delivery_stream}") from exc
        results = response.get("RequestResponses", [])
        if len(results) != len(payloads):
            raise InfraError(f"PutRecordBatch answered {len(results)} results for {len(payloads)} records")
        return [r.get("ErrorCode") or None for r in results]

    async def _send(
        self, group: list[tuple[Packed[T], bytes]], on_ack: Callable[[T], None]
    ) -> list[Packed[T]]:
        """One call for ``group``; acknowledge what was accepted, return what must be resent."""
        async with self._in_flight:
            self.calls += 1
            self.records += len(group)
            try:
                codes = await self.put_batch([data for _, data in group])
            except InfraError as exc:
                log.warning("PutRecordBatch failed, retrying: %s", exc)
                metrics.RECORDS_FAILED.labels("firehose").inc(sum(len(p.keys) for p, _ in group))
                return [p for p, _ in group]
        failed: list[Packed[T]] = []
        for (packed, _), code in zip(group, codes, strict=True):
            if code is None:
                for key in packed.keys:
                    on_ack(key)
            else:
                failed.append(packed)
        if failed:
            events = sum(len(p.keys) for p in failed)
            metrics.FIREHOSE_FAILED_PUTS.inc(events)
            log.warning(
                "Firehose rejected %d of %d records (%d events); resending them",
                len(failed),
                len(group),
                events,
            )
        return failed

    async def deliver(self, items: Sequence[tuple[T, bytes]], on_ack: Callable[[T], None]) -> None:
        """Deliver every ``(key, payload)``; call ``on_ack(key)`` for each once Firehose accepted the
        record carrying it (payloads are packed, see the module doc).

        The calls of one delivery run concurrently (at most ``max_in_flight`` at a time).
        """
        pending = pack(items, self._pack_bytes)
        attempt = 0
        while pending:
            groups = batches([(packed, packed.data) for packed in pending])
            results = await asyncio.gather(*(self._send(group, on_ack) for group in groups))
            pending = [packed for failed in results for packed in failed]
            if pending:
                await asyncio.sleep(backoff_delay(attempt, self._base, self._cap, self._rng.random()))
                attempt += 1
