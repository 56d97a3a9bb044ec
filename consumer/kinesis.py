"""Kinesis reads over aiobotocore: ListShards, GetShardIterator, GetRecords.

Every call has a deadline (the client's connect/read timeouts plus an ``asyncio.timeout`` around
the call); botocore errors become ours: throughput exceeded -> ``Throttled``, an expired iterator ->
:class:`IteratorExpired`, a missing stream -> ``NotFoundError``, the rest -> ``AwsError``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import AwsError, ConfigError
from infra.aws import map_client_error

__all__ = [
    "IteratorExpired",
    "KinesisReader",
    "KinesisRecord",
    "RecordsPage",
    "ShardInfo",
    "StartAt",
    "parse_initial_position",
]


class IteratorExpired(AwsError):
    """The shard iterator is older than five minutes: get a new one from the last handled record."""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool
    starting_hash_key: int
    ending_hash_key: int


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where a shard iterator starts: a Kinesis ShardIteratorType and its argument."""

    kind: str  # TRIM_HORIZON | LATEST | AT_TIMESTAMP | AT_SEQUENCE_NUMBER | AFTER_SEQUENCE_NUMBER
    sequence: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class KinesisRecord:
    sequence: str
    partition_key: str
    data: bytes
    arrival: datetime | None


@dataclass(frozen=True, slots=True)
class RecordsPage:
    records: list[KinesisRecord]
    next_iterator: str | None  # None: the shard is closed and fully read (SHARD_END)
    millis_behind: int | None
    child_shards: list[ShardInfo]


def parse_initial_position(value: str) -> StartAt:
    """``TRIM_HORIZON``, ``LATEST``, ``AT_TIMESTAMP:<ISO-8601>`` or a bare ISO-8601 time."""
    text = value.strip()
    upper = text.upper()
    if upper in ("TRIM_HORIZON", "LATEST"):
        return StartAt(upper)
    stamp = text.split(":", 1)[1] if upper.startswith("AT_TIMESTAMP:") else text
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--initial-position {value!r}: use TRIM_HORIZON, LATEST or AT_TIMESTAMP:<ISO-8601 time>"
        ) from None
    return StartAt("AT_TIMESTAMP", timestamp=when)


def _shard(raw: dict[str, Any]) -> ShardInfo:
    parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
    parents = tuple(raw.get("ParentShards", ())) or parents  # ChildShards entries name ParentShards
    hashes = raw.get("HashKeyRange", {})
    seq = raw.get("SequenceNumberRange", {})
    return ShardInfo(
        shard_id=raw["ShardId"],
        parents=parents,
        closed=bool(seq.get("EndingSequenceNumber")),
        starting_hash_key=int(hashes.get("StartingHashKey", 0)),
        ending_hash_key=int(hashes.get("EndingHashKey", 2**128 - 1)),
    )


class KinesisReader:
    """One stream's reads, through an aiobotocore Kinesis client owned by the caller."""

    def __init__(self, client: Any, stream: str, timeout_s: float = 10.0) -> None:
        self._client = client
        self.stream = stream
        self._timeout_s = timeout_s

    async def _call(self, what: str, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                result: dict[str, Any] = await getattr(self._client, method)(**kwargs)
                return result
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ExpiredIteratorException":
                raise IteratorExpired(f"{what}: {code}") from exc
            raise map_client_error(exc, what) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise map_client_error(exc, what) from exc

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream}
        while True:
            page = await self._call(f"listing the shards of {self.stream}", "list_shards", **kwargs)
            shards.extend(_shard(raw) for raw in page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}

    async def iterator(self, shard_id: str, start: StartAt) -> str:
        kwargs: dict[str, Any] = {
            "StreamName": self.stream,
            "ShardId": shard_id,
            "ShardIteratorType": start.kind,
        }
        if start.sequence is not None:
            kwargs["StartingSequenceNumber"] = start.sequence
        if start.timestamp is not None:
            kwargs["Timestamp"] = start.timestamp
        page = await self._call(f"getting an iterator for {shard_id}", "get_shard_iterator", **kwargs)
        return str(page["ShardIterator"])

    async def get_records(self, iterator: str, limit: int) -> RecordsPage:
        page = await self._call("reading records", "get_records", ShardIterator=iterator, Limit=limit)
        records = [
            KinesisRecord(
                sequence=str(raw["SequenceNumber"]),
                partition_key=str(raw.get("PartitionKey", "")),
                data=bytes(raw["Data"]),
                arrival=raw.get("ApproximateArrivalTimestamp"),
            )
            for raw in page.get("Records", [])
        ]
        behind = page.get("MillisBehindLatest")
        return RecordsPage(
            records=records,
            next_iterator=page.get("NextShardIterator"),
            millis_behind=None if behind is None else int(behind),
            child_shards=[_shard(raw) for raw in page.get("ChildShards", []) or []],
        )
