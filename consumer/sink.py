"""Delivery to Firehose with ``PutRecordBatch``, enforcing Firehose's limits ourselves.

Limits (the real service's; emulators do not enforce them): at most 500 records and 4 MiB per call,
at most 1,000 KiB per record. Each record is one JSON object ending in a newline, so the S3 objects
Firehose writes are newline-delimited JSON.

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
from typing import Any, TypeVar

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
    "batches",
]

log = get_logger(__name__)

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_RECORD_BYTES = MAX_OUTPUT_BYTES  # core.batch holds output records to it (one definition)

T = TypeVar("T")


def batches(items: Sequence[tuple[T, bytes]]) -> list[list[tuple[T, bytes]]]:
    """Split ``(key, payload)`` items, in order, into PutRecordBatch-sized groups."""
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
    ) -> None:
        self._client = client
        self.delivery_stream = delivery_stream
        self._timeout_s = timeout_s
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._rng = rng or random.Random()
        self.calls = 0
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

    async def _send(self, group: list[tuple[T, bytes]], on_ack: Callable[[T], None]) -> list[tuple[T, bytes]]:
        """One call for ``group``; acknowledge what was accepted, return what must be resent."""
        async with self._in_flight:
            self.calls += 1
            try:
                codes = await self.put_batch([payload for _, payload in group])
            except InfraError as exc:
                log.warning("PutRecordBatch failed, retrying: %s", exc)
                metrics.RECORDS_FAILED.labels("firehose").inc(len(group))
                return group
        failed: list[tuple[T, bytes]] = []
        for (key, payload), code in zip(group, codes, strict=True):
            if code is None:
                on_ack(key)
            else:
                failed.append((key, payload))
        if failed:
            metrics.FIREHOSE_FAILED_PUTS.inc(len(failed))
            log.warning("Firehose rejected %d of %d records; resending them", len(failed), len(group))
        return failed

    async def deliver(self, items: Sequence[tuple[T, bytes]], on_ack: Callable[[T], None]) -> None:
        """Deliver every ``(key, payload)``; call ``on_ack(key)`` for each once Firehose accepted it.

        The calls of one delivery run concurrently (at most ``max_in_flight`` at a time).
        """
        pending = list(items)
        attempt = 0
        while pending:
            groups = batches(pending)
            results = await asyncio.gather(*(self._send(group, on_ack) for group in groups))
            pending = [item for failed in results for item in failed]
            if pending:
                await asyncio.sleep(backoff_delay(attempt, self._base, self._cap, self._rng.random()))
                attempt += 1
