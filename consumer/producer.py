"""The event producer for demos and load tests: lab-shaped browsing events onto a Kinesis stream.

Events are drawn (seeded) from the shop's customers and products. ``PutRecords`` carries up to 500
records (5 MiB) per call; records the stream rejects (a per-record ``ErrorCode``, e.g. throughput
exceeded) are resent alone after a capped, jittered backoff. With ``aggregate=True`` events are
packed KPL-style; an aggregate only holds events bound for one shard (by the MD5 of their partition
key, the customer number), and is put with that shard's hash key, so per-customer order is kept.

The summary lists the ``event_id`` of every event sent, exactly as the consumer will name it.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from consumer.kpl import DEFAULT_MAX_AGGREGATE_BYTES
from consumer.kpl import aggregate as kpl_aggregate
from core.errors import ConfigError, InfraError
from core.leases import backoff_delay
from infra.aws import map_client_error, sync_client

__all__ = ["CustomerLike", "ProduceSummary", "make_event", "produce", "put_records"]

MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
MAX_ATTEMPTS = 12


class CustomerLike(Protocol):
    @property
    def customer_number(self) -> int: ...
    @property
    def city(self) -> str | None: ...
    @property
    def country(self) -> str | None: ...
    @property
    def credit_limit(self) -> float | None: ...


@dataclass(slots=True)
class ProduceSummary:
    sent: int = 0  # events (user records)
    kinesis_records: int = 0  # records put (fewer than events when aggregated)
    put_calls: int = 0
    failed_retried: int = 0  # records rejected by the stream and resent
    elapsed_s: float = 0.0
    event_ids: list[str] = field(default_factory=list)


def make_event(rng: random.Random, customer: CustomerLike, product_codes: Sequence[str]) -> dict[str, Any]:
    """One browsing event in the lab's shape (quantities sometimes as numeric strings, as in the lab)."""
    history = []
    for code in rng.sample(list(product_codes), k=min(len(product_codes), rng.randint(1, 4))):
        qty: int | str = rng.randint(1, 5)
        if rng.random() < 0.2:
            qty = str(qty)
        history.append({"product_code": code, "quantity": qty, "in_shopping_cart": rng.random() < 0.3})
    return {
        "session_id": uuid.UUID(int=rng.getrandbits(128)).hex[:12],
        "customer_number": customer.customer_number,
        "city": customer.city,
        "country": customer.country,
        "credit_limit": customer.credit_limit,
        "browse_history": history,
        "event_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def _hash_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode(), usedforsecurity=False).digest(), "big")


def _open_shards(client: Any, stream: str) -> list[tuple[int, int]]:
    try:
        shards = client.list_shards(StreamName=stream, ShardFilter={"Type": "AT_LATEST"})["Shards"]
    except Exception as exc:
        raise map_client_error(exc, f"listing the shards of {stream}") from exc
    return sorted(
        (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"])) for s in shards
    )


def put_records(
    client: Any,
    stream: str,
    entries: Sequence[dict[str, Any]],
    summary: ProduceSummary,
    rng: random.Random,
) -> list[tuple[str, str]]:
    """Put entries (500 per call), resending rejected ones; return ``(shard id, sequence)`` per entry."""
    results: list[tuple[str, str] | None] = [None] * len(entries)
    pending = list(range(len(entries)))
    attempt = 0
    while pending:
        failed: list[int] = []
        for chunk in _chunks(pending, entries):
            try:
                response = client.put_records(StreamName=stream, Records=[entries[i] for i in chunk])
            except Exception as exc:
                mapped = map_client_error(exc, f"PutRecords to {stream}")
                if not mapped.retriable or attempt >= MAX_ATTEMPTS:
                    raise mapped from exc
                failed.extend(chunk)
                continue
            summary.put_calls += 1
            for i, rec in zip(chunk, response["Records"], strict=True):
                if rec.get("ErrorCode"):
                    failed.append(i)
                else:
                    results[i] = (str(rec["ShardId"]), str(rec["SequenceNumber"]))
        if failed:
            summary.failed_retried += len(failed)
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                raise InfraError(f"{len(failed)} records were still rejected after {MAX_ATTEMPTS} attempts")
            time.sleep(backoff_delay(attempt, 0.05, 2.0, rng.random()))
        pending = failed
    return [r for r in results if r is not None]


def _chunks(indexes: list[int], entries: Sequence[dict[str, Any]]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for i in indexes:
        entry_size = len(entries[i]["Data"]) + len(entries[i]["PartitionKey"])
        if chunk and (len(chunk) == MAX_PUT_RECORDS or size + entry_size > MAX_PUT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += entry_size
    if chunk:
        yield chunk


def _send(
    client: Any,
    *,
    stream: str,
    events: list[dict[str, Any]],
    aggregate: bool,
    shards: list[tuple[int, int]],
    summary: ProduceSummary,
    rng: random.Random,
) -> None:
    user = [(str(e["customer_number"]), orjson.dumps(e)) for e in events]
    if not aggregate:
        entries: list[dict[str, Any]] = [{"PartitionKey": pk, "Data": data} for pk, data in user]
        placed = put_records(client, stream, entries, summary, rng)
        summary.event_ids.extend(f"{shard}:{seq}" for shard, seq in placed)
        summary.kinesis_records += len(entries)
    else:
        groups: dict[int, list[tuple[str, bytes]]] = {}
        for pk, data in user:
            h = _hash_key(pk)
            index = next((n for n, (lo, hi) in enumerate(shards) if lo <= h <= hi), 0)
            groups.setdefault(index, []).append((pk, data))
        blobs = []
        for index, records in sorted(groups.items()):
            explicit = str(shards[index][0]) if shards else None
            blobs.extend(kpl_aggregate(records, DEFAULT_MAX_AGGREGATE_BYTES, explicit))
        entries = []
        for blob in blobs:
            entry: dict[str, Any] = {"PartitionKey": blob.partition_key, "Data": blob.data}
            if blob.explicit_hash_key is not None:
                entry["ExplicitHashKey"] = blob.explicit_hash_key
            entries.append(entry)
        placed = put_records(client, stream, entries, summary, rng)
        for blob, (shard, seq) in zip(blobs, placed, strict=True):
            summary.event_ids.extend(f"{shard}:{seq}:{sub}" for sub in range(blob.count))
        summary.kinesis_records += len(entries)
    summary.sent += len(events)


def produce(  # noqa: PLR0917 - the cross-part API names these positionally
    stream: str,
    catalog_customers: Sequence[CustomerLike],
    product_codes: Sequence[str],
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    aggregate: bool = False,
    seed: int = 0,
    client: Any | None = None,
) -> ProduceSummary:
    """Send ``count`` events (or for ``duration_s`` seconds), at ``rate`` events/s or as fast as possible."""
    if (count is None) == (duration_s is None):
        raise ConfigError("give exactly one of --count and --duration")
    if count is not None and count < 0:
        raise ConfigError("--count must be >= 0")
    if rate is not None and rate <= 0:
        raise ConfigError("--rate must be > 0")
    if not catalog_customers or not product_codes:
        raise ConfigError("the catalog has no customers or no products; run `recsys seed` first")
    client = client or sync_client("kinesis")
    rng = random.Random(seed)
    shards = _open_shards(client, stream) if aggregate else []
    summary = ProduceSummary()
    started = time.monotonic()
    chunk = MAX_PUT_RECORDS if rate is None else max(1, min(MAX_PUT_RECORDS, int(rate / 10) or 1))
    while True:
        elapsed = time.monotonic() - started
        if count is not None and summary.sent >= count:
            break
        if duration_s is not None and elapsed >= duration_s:
            break
        n = chunk if count is None else min(chunk, count - summary.sent)
        events = [make_event(rng, rng.choice(catalog_customers), product_codes) for _ in range(n)]
        _send(
            client, stream=stream, events=events, aggregate=aggregate, shards=shards, summary=summary, rng=rng
        )
        if rate is not None:
            ahead = summary.sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    summary.elapsed_s = time.monotonic() - started
    return summary
