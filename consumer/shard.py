"""One shard's record processor: poll, de-aggregate, validate, recommend, deliver, checkpoint.

The lifecycle follows the KCL's record processor:

- *initialize*: open an iterator at the lease's checkpoint (``AT_SEQUENCE_NUMBER`` and skip what the
  checkpoint covers, so a half-done KPL aggregate resumes at the right sub-record), at
  ``TRIM_HORIZON`` for a child shard, or at the consumer's initial position for a new shard;
- *process_records*: one batch per GetRecords page, handled to the end before the next call:
  bad records -> dead letters, good ones -> one ``recommend_batch`` call per ``batch_max_records``
  -> Firehose -> latest recommendations -> checkpoint past what was acknowledged;
- *lease_lost*: ``LeaseLost`` from a checkpoint (or the coordinator cancelling the task): stop at
  once, no checkpoint;
- *shard_ended*: a null ``NextShardIterator``: checkpoint ``SHARD_END`` so children may start;
- *shutdown_requested*: the drain event: finish the batch in hand, checkpoint, return.

Pacing: at most one GetRecords per ``poll_interval_s`` (>= 0.2 s keeps under Kinesis's five per
second per shard); throttling and transient failures back off (capped, jittered).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import orjson

from consumer import metrics
from consumer.config import ConsumerSettings
from consumer.deadletters import DeadLetter, DeadLetterStore
from consumer.kinesis import (
    IteratorExpired,
    KinesisReader,
    KinesisRecord,
    RecordsPage,
    ShardInfo,
    StartAt,
)
from consumer.kpl import deaggregate, is_aggregated
from consumer.leases import HeldLease, PgLeaseTable
from consumer.sink import MAX_RECORD_BYTES, FirehoseSink
from core.checkpointing import TRIM_HORIZON, CheckpointTracker, Position, is_after
from core.errors import BadRecord, DatabaseUnavailable, InfraError, ModelNotReady, RecsysError
from core.events import BrowsingEvent, parse_event
from core.leases import backoff_delay
from core.ports import LatestStore, Recommender
from core.recommendations import Recommendation, RecommendRequest
from infra.latest import LatestRow
from infra.logs import get_logger
from infra.suppression import SuppressionList

__all__ = ["ConsumerStats", "ShardOutcome", "ShardWorker", "event_id"]

log = get_logger(__name__)
T = TypeVar("T")


class ShardOutcome(StrEnum):
    ENDED = "ended"  # read to SHARD_END and checkpointed there
    DRAINED = "drained"  # stopped on request after its last batch was checkpointed


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one consumer process (read by the demo; Prometheus has the same and more)."""

    records_in: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    checkpoints: int = 0
    shards_ended: int = 0
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    position: Position
    partition_key: str
    data: bytes
    arrival: datetime | None
    aggregated: bool


def event_id(shard_id: str, position: Position, aggregated: bool) -> str:
    """``<shard id>:<sequence number>[:<sub-sequence>]`` — the same on every replay."""
    base = f"{shard_id}:{position.sequence}"
    return f"{base}:{position.sub}" if aggregated else base


class ShardWorker:
    def __init__(
        self,
        *,
        lease: HeldLease,
        table: PgLeaseTable,
        reader: KinesisReader,
        sink: FirehoseSink,
        dead_letters: DeadLetterStore,
        recommender: Recommender,
        latest: LatestStore,
        settings: ConsumerSettings,
        initial: StartAt,
        draining: asyncio.Event,
        stats: ConsumerStats,
        on_children: Callable[[list[ShardInfo]], Awaitable[None]],
        recommend_k: int = 10,
        rng: random.Random | None = None,
        suppression: SuppressionList | None = None,
    ) -> None:
        self.lease = lease
        self._suppression = suppression
        self.shard_id = lease.shard_id
        self._table = table
        self._reader = reader
        self._sink = sink
        self._dead = dead_letters
        self._recommender = recommender
        self._latest = latest
        self._cfg = settings
        self._initial = initial
        self._draining = draining
        self._stats = stats
        self._on_children = on_children
        self._k = recommend_k
        self._rng = rng or random.Random()
        self._tracker = CheckpointTracker(lease.checkpoint)
        self._skip_until: Position | None = lease.checkpoint

    # ------------------------------------------------------------------ the loop
    def _start(self) -> StartAt:
        done = self._tracker.safe_position()
        self._skip_until = done
        if done is not None:
            return StartAt("AT_SEQUENCE_NUMBER", sequence=done.sequence)
        if self.lease.checkpoint_seq == TRIM_HORIZON:
            return StartAt("TRIM_HORIZON")
        return self._initial

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until it succeeds; back off on retriable errors. Cancellation ends it."""
        attempt = 0
        while True:
            try:
                return await call()
            except (InfraError, ModelNotReady) as exc:
                if not exc.retriable and not isinstance(exc, ModelNotReady):
                    raise
                metrics.RECORDS_FAILED.labels(what).inc()
                delay = backoff_delay(attempt, 0.1, 5.0, self._rng.random())
                log.warning("%s failed (attempt %d), retrying in %.2fs: %s", what, attempt + 1, delay, exc)
                await asyncio.sleep(delay)
                attempt += 1

    async def _fetch(self, iterator: str, not_before: float) -> tuple[RecordsPage, float]:
        """One paced GetRecords: not before ``not_before`` (monotonic); returns the page and its start."""
        delay = not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.monotonic()
        return await self._reader.get_records(iterator, self._cfg.get_records_limit), started

    async def _next(self, fetch: asyncio.Task[tuple[RecordsPage, float]]) -> tuple[RecordsPage, float] | None:
        """The fetched page, or ``None`` if draining began first (the fetch is then cancelled)."""
        if self._draining.is_set():
            fetch.cancel()
            return None
        drain = asyncio.create_task(self._draining.wait())
        try:
            await asyncio.wait({fetch, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if not fetch.done():
            fetch.cancel()
            return None
        return fetch.result()

    async def run(self) -> ShardOutcome:
        """Read and process the shard until it ends, the lease is lost, or draining is requested.

        The next page is fetched (paced) while the current one is processed, like the KCL's
        prefetching publisher; a page's records are handled in full before the next page's.
        """
        iterator = await self._retry(
            "get_shard_iterator", lambda: self._reader.iterator(self.shard_id, self._start())
        )
        attempt = 0
        # records of a shard that is behind may wait up to batch_max_wait_ms for the next page, so
        # small pages share one recommender call; a full batch, a caught-up shard or the end of the
        # shard is processed at once
        held: list[KinesisRecord] = []
        held_since = 0.0
        window_s = self._cfg.batch_max_wait_ms / 1000
        fetch = asyncio.create_task(self._fetch(iterator, 0.0), name=f"fetch-{self.shard_id}")
        try:
            while True:
                try:
                    got = await self._next(fetch)
                except IteratorExpired:
                    log.info("iterator expired; re-acquiring from the last handled record")
                    held.clear()  # not registered yet: they are read again from the safe position
                    iterator = await self._retry(
                        "get_shard_iterator", lambda: self._reader.iterator(self.shard_id, self._start())
                    )
                    fetch = asyncio.create_task(self._fetch(iterator, 0.0))
                    continue
                except InfraError as exc:
                    if not exc.retriable:
                        raise
                    metrics.RECORDS_FAILED.labels("get_records").inc()
                    log.warning("GetRecords failed, backing off: %s", exc)
                    delay = backoff_delay(attempt, 0.2, 5.0, self._rng.random())
                    attempt += 1
                    fetch = asyncio.create_task(self._fetch(iterator, time.monotonic() + delay))
                    continue
                if got is None:
                    break
                page, called_at = got
                attempt = 0
                if page.millis_behind is not None:
                    metrics.MILLIS_BEHIND.labels(self.shard_id).set(page.millis_behind)
                if page.next_iterator is not None:
                    iterator = page.next_iterator
                    fetch = asyncio.create_task(
                        self._fetch(iterator, called_at + self._cfg.poll_interval_s),
                        name=f"fetch-{self.shard_id}",
                    )
                if page.records:
                    if not held:
                        held_since = time.monotonic()
                    held.extend(page.records)
                wait_for_more = (
                    page.next_iterator is not None
                    and (page.millis_behind or 0) > 0
                    and len(held) < self._cfg.batch_max_records
                    and time.monotonic() - held_since + self._cfg.poll_interval_s <= window_s
                )
                if held and not wait_for_more:
                    await self.process(held)
                    held = []
                if page.child_shards:
                    await self._on_children(page.child_shards)
                if page.next_iterator is None:
                    await self._table.checkpoint(self.lease, None, shard_end=True)
                    self._stats.shards_ended += 1
                    log.info("shard ended; checkpointed at SHARD_END")
                    return ShardOutcome.ENDED
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, RecsysError):
                    await fetch
        if held:
            await self.process(held)  # shutdown requested: finish what was read
        return ShardOutcome.DRAINED

    # ------------------------------------------------------------------ one batch
    def _items(self, records: Sequence[KinesisRecord], bad: list[DeadLetter]) -> list[_Item]:
        items: list[_Item] = []
        for rec in records:
            aggregated = is_aggregated(rec.data)
            try:
                users = deaggregate(rec.data, rec.partition_key)
            except BadRecord as exc:
                position = Position(rec.sequence, 0)
                if is_after(position, self._skip_until):
                    self._tracker.register(position)
                    bad.append(
                        DeadLetter(
                            self.shard_id,
                            position,
                            exc.reason,
                            exc.detail,
                            rec.data,
                            rec.partition_key,
                            rec.arrival,
                        )
                    )
                continue
            for user in users:
                position = Position(rec.sequence, user.sub)
                if not is_after(position, self._skip_until):
                    continue  # covered by the checkpoint we resumed from
                self._tracker.register(position)
                items.append(_Item(position, user.partition_key, user.data, rec.arrival, aggregated))
        return items

    async def process(self, records: Sequence[KinesisRecord]) -> None:
        """Handle one GetRecords page to the end and checkpoint past it."""
        started = time.perf_counter()
        bad: list[DeadLetter] = []
        items = self._items(records, bad)
        good: list[tuple[_Item, BrowsingEvent]] = []
        for item in items:
            try:
                good.append((item, parse_event(item.data)))
            except BadRecord as exc:
                bad.append(
                    DeadLetter(
                        self.shard_id,
                        item.position,
                        exc.reason,
                        exc.detail,
                        item.data,
                        item.partition_key,
                        item.arrival,
                    )
                )
        if self._suppression is not None:
            # customers who asked to be forgotten with --suppress: checkpointed past, never delivered
            await self._suppression.maybe_refresh()
            good, dropped = self._suppression.partition(good, lambda pair: pair[1].customer_number)
            for item, _ in dropped:
                self._tracker.ack(item.position)
            if dropped:
                metrics.RECORDS_SUPPRESSED.inc(len(dropped))
                self._stats.suppressed += len(dropped)
        count = len(items) + sum(1 for letter in bad if letter.reason == "bad_aggregate")
        metrics.RECORDS_IN.inc(count)
        metrics.BATCH_SIZE.observe(count)
        self._stats.records_in += count
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)

        answers = await self._recommend([event for _, event in good])
        processed_at = datetime.now(UTC).isoformat()
        outputs: list[tuple[Position, bytes]] = []
        rows: list[LatestRow] = []
        now = datetime.now(UTC)
        for (item, event), answer in zip(good, answers, strict=True):
            eid = event_id(self.shard_id, item.position, item.aggregated)
            payload = (
                orjson.dumps({**event.raw, **answer.to_json(), "event_id": eid, "processed_at": processed_at})
                + b"\n"
            )
            if len(payload) > MAX_RECORD_BYTES:
                bad.append(
                    DeadLetter(
                        self.shard_id,
                        item.position,
                        "result_too_large",
                        f"{len(payload)} bytes exceed Firehose's {MAX_RECORD_BYTES}",
                        item.data,
                        item.partition_key,
                        item.arrival,
                    )
                )
                continue
            outputs.append((item.position, payload))
            rows.append(
                LatestRow(event.customer_number, answer, eid, event.event_time or item.arrival or now, now)
            )

        if bad:
            t0 = time.perf_counter()
            bad.sort(key=lambda letter: letter.position.key)
            await self._retry("dead_letters", lambda: self._dead.put(bad))
            for letter in bad:
                self._tracker.ack(letter.position)
            self._stats.dead_lettered += len(bad)
            metrics.STAGE_SECONDS.labels("dead_letters").observe(time.perf_counter() - t0)
        if outputs:
            t0 = time.perf_counter()
            await self._sink.deliver(outputs, self._acked)
            metrics.STAGE_SECONDS.labels("firehose").observe(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await self._retry("latest", lambda: self._latest.upsert_many(rows))
            metrics.STAGE_SECONDS.labels("latest").observe(time.perf_counter() - t0)
        await self._checkpoint()
        self._stats.batches += 1
        metrics.STAGE_SECONDS.labels("batch").observe(time.perf_counter() - started)

    def _acked(self, position: Position) -> None:
        self._tracker.ack(position)
        self._stats.delivered += 1
        metrics.RECORDS_OUT.inc()

    async def _recommend(self, events: Sequence[BrowsingEvent]) -> list[Recommendation]:
        answers: list[Recommendation] = []
        size = self._cfg.batch_max_records
        for start in range(0, len(events), size):
            chunk = events[start : start + size]
            requests = [
                RecommendRequest(e.customer_number, e.features, e.browse_history, self._k) for e in chunk
            ]
            t0 = time.perf_counter()
            got = await self._retry("recommend", self._recommend_call(requests))
            metrics.STAGE_SECONDS.labels("recommend").observe(time.perf_counter() - t0)
            if len(got) != len(requests):
                raise InfraError(f"the recommender answered {len(got)} of {len(requests)} requests")
            answers.extend(got)
        return answers

    def _recommend_call(
        self, requests: list[RecommendRequest]
    ) -> Callable[[], Awaitable[list[Recommendation]]]:
        return lambda: self._recommender.recommend_batch(requests)

    async def _checkpoint(self) -> None:
        position = self._tracker.to_checkpoint()
        if position is None:
            return
        t0 = time.perf_counter()
        try:
            await self._table.checkpoint(self.lease, position)
        except DatabaseUnavailable as exc:
            metrics.CHECKPOINT_FAILURES.inc()
            log.warning("checkpoint at %s failed (the next batch retries): %s", position, exc)
            return
        self._tracker.checkpointed(position)
        self._stats.checkpoints += 1
        metrics.STAGE_SECONDS.labels("checkpoint").observe(time.perf_counter() - t0)

    async def final_checkpoint(self) -> None:
        """Last chance on shutdown: record whatever prefix is acknowledged."""
        await self._checkpoint()
