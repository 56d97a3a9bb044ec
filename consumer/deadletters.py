"""The dead-letter store: bad records, with their raw bytes, position and reason, never lost.

One object per processed batch that had bad records, newline-delimited JSON, one line per record::

    {"shard_id": ..., "sequence_number": ..., "sub_sequence": 0, "reason": "not_json",
     "detail": "...", "data_base64": "...", "partition_key": ..., "arrival": ..., "dead_lettered_at": ...}

The key is derived from the first record's position (``<shard>/<sequence>-<sub>.jsonl``), so a
batch replayed after a crash overwrites its own dead letters instead of duplicating them. The store
is an S3 prefix (``s3://bucket/prefix``) or a local folder, written off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from consumer import metrics
from core.checkpointing import Position
from infra.objectstore import ObjectStore, open_store

__all__ = ["DeadLetter", "DeadLetterStore"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    shard_id: str
    position: Position
    reason: str
    detail: str
    data: bytes
    partition_key: str = ""
    arrival: datetime | None = None

    def to_json(self, now: datetime) -> dict[str, object]:
        return {
            "shard_id": self.shard_id,
            "sequence_number": self.position.sequence,
            "sub_sequence": self.position.sub,
            "reason": self.reason,
            "detail": self.detail,
            "data_base64": base64.b64encode(self.data).decode(),
            "partition_key": self.partition_key,
            "arrival": self.arrival.isoformat() if self.arrival else None,
            "dead_lettered_at": now.isoformat(),
        }


class DeadLetterStore:
    """Writes batches of dead letters under one prefix. ``written`` counts records stored."""

    def __init__(self, uri: str, store: ObjectStore | None = None) -> None:
        self.uri = uri
        self._store = store
        self.written = 0

    def _open(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.uri)
        return self._store

    @staticmethod
    def key_for(letters: Sequence[DeadLetter]) -> str:
        first = letters[0]
        shard = first.shard_id.replace("/", "_")
        return f"{shard}/{first.position.sequence}-{first.position.sub}.jsonl"

    async def put(self, letters: Sequence[DeadLetter]) -> None:
        """Store the batch (one object). Raises ``InfraError`` subclasses when the store fails."""
        if not letters:
            return
        now = datetime.now(UTC)
        body = b"".join(orjson.dumps(letter.to_json(now)) + b"\n" for letter in letters)
        store = await asyncio.to_thread(self._open)
        await asyncio.to_thread(store.put_bytes, self.key_for(letters), body)
        self.written += len(letters)
        for letter in letters:
            metrics.RECORDS_DEAD_LETTERED.labels(letter.reason).inc()
