"""The dead-letter store: bad records, with their raw bytes, position and reason, never lost.

The format (one JSON line per record, one object per batch, keyed by the batch's first position) is
defined once, in ``core.deadletters``, which ``recsys forget`` reads with. The store is an S3 prefix
(``s3://bucket/prefix``) or a local folder, written off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from consumer import metrics
from core.deadletters import DeadLetter, object_key
from infra.objectstore import ObjectStore, open_store

__all__ = ["DeadLetter", "DeadLetterStore"]


class DeadLetterStore:
    """Writes batches of dead letters under one prefix (``consumer.ports.DeadLetterSink``).
    ``written`` counts records stored."""

    def __init__(self, uri: str, store: ObjectStore | None = None) -> None:
        self.uri = uri
        self._store = store
        self.written = 0

    def _open(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.uri)
        return self._store

    async def put(self, letters: Sequence[DeadLetter]) -> None:
        """Store the batch (one object). Raises ``InfraError`` subclasses when the store fails."""
        if not letters:
            return
        now = datetime.now(UTC)
        body = b"".join(orjson.dumps(letter.to_json(now)) + b"\n" for letter in letters)
        store = await asyncio.to_thread(self._open)
        await asyncio.to_thread(store.put_bytes, object_key(letters), body)
        self.written += len(letters)
        for letter in letters:
            metrics.RECORDS_DEAD_LETTERED.labels(letter.reason).inc()
