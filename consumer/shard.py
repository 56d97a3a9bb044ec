"""One shard's record processor: poll, de-aggregate, validate, recommend, deliver, checkpoint.

The lifecycle follows the KCL's record processor:

- *initialize*: open an iterator at the lease's checkpoint (``AT_SEQUENCE_NUMBER`` and skip what the
  checkpoint covers, so a half-done KPL aggregate resumes at the right sub-record), at
  ``TRIM_HORIZON`` for a child shard, or at the consumer's initial position for a new shard;
- *process_records*: one batch per GetRecords page, handled to the end before the next call. The
  decisions are ``core.batch``'s (pure): split, decode and validate (:func:`~core.batch.triage`),
  one ``recommend_batch`` call per ``batch_max_records`` (a request the recommender refuses is
  isolated by bisection, :func:`~core.batch.answer_each`), the output records and their size rule
  (:func:`~core.batch.finish`). This adapter acts on them: latest recommendations (a row the
  database refuses is isolated the same way) -> dead letters -> Firehose -> checkpoint past what
  was acknowledged. The Firehose delivery runs beside the next batch (at most
  ``_DELIVERIES_IN_FLIGHT`` of a shard): once the latest rows are stored the batch is visible in
  the API, whatever Firehose takes; the checkpoint follows the acknowledgements, in order. One bad
  record is dead-lettered with its reason; it never stops the shard;
- *lease_lost*: ``LeaseLost`` from a checkpoint (or the coordinator cancelling the task): stop at
  once, no checkpoint; deliveries in flight are cancelled (their records are replayed);
- *shard_ended*: a null ``NextShardIterator``: wait for the deliveries, checkpoint ``SHARD_END``
  so children may start;
- *shutdown_requested*: the drain event: finish the batch in hand and its delivery, checkpoint,
  return.

Pacing: at most one GetRecords per ``poll_interval_s`` (>= 0.2 s keeps under Kinesis's five per
second per shard); throttling and infrastructure failures (AWS, the database) back off (capped,
jittered) and are retried until they succeed, logged once when they start failing and once when
they recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from consumer import metrics
from consumer.config import ConsumerSettings
from consumer.kinesis import IteratorExpired, KinesisRecord, RecordsPage, ShardInfo, StartAt
from consumer.kpl import deaggregate, is_aggregated
from consumer.leases import HeldLease
from consumer.ports import DeadLetterSink, LeaseTable, RecordReader, RecordSink, Suppression
from core.batch import Accepted, Delivery, Refusal, answer_each, event_id, finish, triage
from core.checkpointing import TRIM_HORIZON, CheckpointTracker, Position
from core.deadletters import DeadLetter
from core.errors import DatabaseUnavailable, InfraError, ModelNotReady, RecsysError
from core.leases import backoff_delay
from core.ports import LatestStore, Recommender
from core.recommendations import Recommendation, RecommendRequest
from infra.logs import get_logger

__all__ = ["ConsumerStats", "ShardOutcome", "ShardWorker", "event_id", "loads_json"]

log = get_logger(__name__)
T = TypeVar("T")
_DELIVERIES_IN_FLIGHT = 2  # Firehose deliveries of one shard running beside its next batch


_LONG_DIGITS = re.compile(rb"\d{19}")  # orjson turns integers beyond 64 bits into floats


def loads_json(data: bytes) -> Any:
    """``json.loads``' answer, ~4x faster: orjson, unless the record has a run of 19 digits (an
    integer orjson would turn into a float, or a long fraction) or orjson refuses it (NaN, a BOM or
    UTF-16, escaped lone surrogates, bad input): those go to ``json.loads``, so the same records
    are accepted and refused, with the same values."""
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


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


class ShardWorker:
    def __init__(
        self,
        *,
        lease: HeldLease,
        table: LeaseTable,
        reader: RecordReader,
        sink: RecordSink,
        dead_letters: DeadLetterSink,
        recommender: Recommender,
        latest: LatestStore,
        settings: ConsumerSettings,
        initial: StartAt,
        draining: asyncio.Event,
        stats: ConsumerStats,
        on_children: Callable[[list[ShardInfo]], Awaitable[None]],
        recommend_k: int = 10,
        rng: random.Random | None = None,
        suppression: Suppression | None = None,
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
        self._deliveries: set[asyncio.Task[None]] = set()  # Firehose deliveries in flight
        self._delivery_failed: BaseException | None = None  # the first, raised by the loop
        self._checkpoint_lock = asyncio.Lock()

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
        """Run ``call`` until it succeeds; back off on infrastructure failures (logged when they
        start and when they end, not at every attempt). Cancellation ends it."""
        attempt = 0
        while True:
            try:
                result = await call()
            except (InfraError, ModelNotReady) as exc:
                if isinstance(exc, InfraError) and not exc.retriable:
                    raise
                metrics.RECORDS_FAILED.labels(what).inc()
                delay = backoff_delay(attempt, 0.1, 5.0, self._rng.random())
                if attempt == 0:
                    log.warning("%s failed; retrying with backoff until it succeeds: %s", what, exc)
                else:
                    log.debug("%s failed (attempt %d), retrying in %.2fs: %s", what, attempt + 1, delay, exc)
                await asyncio.sleep(delay)
                attempt += 1
            else:
                if attempt:
                    log.info("%s succeeded again after %d failed attempt(s)", what, attempt)
                return result

    async def _fetch(self, iterator: str, not_before: float) -> tuple[RecordsPage, float]:
        """One paced GetRecords: not before ``not_before`` (monotonic); returns the page and its start."""
        delay = not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.monotonic()
        page = await self._reader.get_records(iterator, self._cfg.get_records_limit)
        metrics.STAGE_SECONDS.labels("get_records").observe(time.monotonic() - started)
        return page, started

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
                self._raise_delivery_failure()
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
                    await self._settle()
                    await self._table.checkpoint(self.lease, None, shard_end=True)
                    self._stats.shards_ended += 1
                    log.info("shard ended; checkpointed at SHARD_END")
                    return ShardOutcome.ENDED
            if held:
                await self.process(held)  # shutdown requested: finish what was read
            await self._settle()
            return ShardOutcome.DRAINED
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, RecsysError):
                    await fetch
            # lease lost, a failure or the shutdown deadline: what was not acknowledged is replayed
            for task in self._deliveries:
                task.cancel()

    # ------------------------------------------------------------------ one batch
    async def process(self, records: Sequence[KinesisRecord]) -> None:
        """Handle one GetRecords page to the end and checkpoint past it (see the module doc)."""
        started = time.perf_counter()
        suppression = self._suppression
        if suppression is not None:
            await suppression.maybe_refresh()  # customers who asked to be forgotten with --suppress
        plan = triage(
            records,
            shard_id=self.shard_id,
            after=self._skip_until,
            split=deaggregate,
            is_aggregated=is_aggregated,
            suppressed=None if suppression is None else suppression.contains,
            loads=loads_json,
        )
        for position in plan.positions:
            self._tracker.register(position)
        for position in plan.suppressed:  # checkpointed past, never delivered
            self._tracker.ack(position)
        if plan.suppressed:
            metrics.RECORDS_SUPPRESSED.inc(len(plan.suppressed))
            self._stats.suppressed += len(plan.suppressed)
        metrics.RECORDS_IN.inc(plan.records_in)
        self.lease.records_in += plan.records_in  # the shard's load, reported with renewals
        metrics.BATCH_SIZE.observe(plan.records_in)
        self._stats.records_in += plan.records_in
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)

        answers = await self._recommend(plan.accepted)
        done = finish(
            plan.accepted, answers, shard_id=self.shard_id, now=datetime.now(UTC), encode=orjson.dumps
        )
        dead = [*plan.dead, *done.dead]
        deliveries = await self._store_latest(done.deliveries, dead)
        if dead:
            t0 = time.perf_counter()
            dead.sort(key=lambda letter: letter.position.key)
            await self._retry("dead_letters", lambda: self._dead.put(dead))
            for letter in dead:
                self._tracker.ack(letter.position)
            self._stats.dead_lettered += len(dead)
            metrics.STAGE_SECONDS.labels("dead_letters").observe(time.perf_counter() - t0)
        if deliveries:
            # the latest rows are stored (the API shows the batch): Firehose runs beside the next
            # batch, at most _DELIVERIES_IN_FLIGHT of them; the checkpoint follows the acks
            await self._room()
            task = asyncio.create_task(self._deliver(deliveries), name=f"deliver-{self.shard_id}")
            self._deliveries.add(task)
            task.add_done_callback(self._delivered)
        await self._checkpoint()
        self._stats.batches += 1
        metrics.STAGE_SECONDS.labels("batch").observe(time.perf_counter() - started)

    async def _deliver(self, deliveries: Sequence[Delivery]) -> None:
        t0 = time.perf_counter()
        await self._sink.deliver([(d.record.position, d.payload) for d in deliveries], self._acked)
        metrics.STAGE_SECONDS.labels("firehose").observe(time.perf_counter() - t0)
        await self._checkpoint()

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None and self._delivery_failed is None:
            self._delivery_failed = task.exception()

    def _raise_delivery_failure(self) -> None:
        """A delivery that failed (its checkpoint found the lease lost) fails the shard."""
        if self._delivery_failed is not None:
            raise self._delivery_failed

    async def _room(self) -> None:
        """Wait until fewer than ``_DELIVERIES_IN_FLIGHT`` deliveries are in flight."""
        while len(self._deliveries) >= _DELIVERIES_IN_FLIGHT:
            await asyncio.wait(set(self._deliveries), return_when=asyncio.FIRST_COMPLETED)
            self._raise_delivery_failure()
        self._raise_delivery_failure()

    async def _settle(self) -> None:
        """Wait for every delivery in flight, then checkpoint."""
        while self._deliveries:
            await asyncio.wait(set(self._deliveries))
        self._raise_delivery_failure()
        await self._checkpoint()

    def _acked(self, position: Position) -> None:
        self._tracker.ack(position)
        self._stats.delivered += 1
        metrics.RECORDS_OUT.inc()

    async def _recommend(self, accepted: Sequence[Accepted]) -> list[Recommendation | Refusal]:
        """One recommender call per ``batch_max_records`` events; refused requests isolated."""
        answers: list[Recommendation | Refusal] = []
        size = self._cfg.batch_max_records
        for start in range(0, len(accepted), size):
            requests = [
                RecommendRequest(a.event.customer_number, a.event.features, a.event.browse_history, self._k)
                for a in accepted[start : start + size]
            ]
            t0 = time.perf_counter()
            answers.extend(await answer_each(requests, self._ask, reason="recommend_failed"))
            metrics.STAGE_SECONDS.labels("recommend").observe(time.perf_counter() - t0)
        return answers

    async def _ask(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        return await self._retry("recommend", lambda: self._recommender.recommend_batch(requests))

    async def _store_latest(self, deliveries: list[Delivery], dead: list[DeadLetter]) -> list[Delivery]:
        """Upsert the customers' latest rows before delivery; a record whose row the database
        refuses is dead-lettered instead of delivered. Returns what is left to deliver."""
        if not deliveries:
            return []
        t0 = time.perf_counter()

        async def upsert(batch: Sequence[Delivery]) -> Sequence[Delivery]:
            await self._retry("latest", lambda: self._latest.upsert_many([d.row for d in batch]))
            return batch

        kept: list[Delivery] = []
        for delivery, result in zip(
            deliveries, await answer_each(deliveries, upsert, reason="latest_rejected"), strict=True
        ):
            if isinstance(result, Refusal):
                dead.append(delivery.record.dead(self.shard_id, result.reason, result.detail))
            else:
                kept.append(delivery)
        metrics.STAGE_SECONDS.labels("latest").observe(time.perf_counter() - t0)
        return kept

    async def _checkpoint(self) -> None:
        async with self._checkpoint_lock:  # one at a time, so a checkpoint never moves back
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

    def unrecorded(self) -> Position | None:
        """Acknowledged past the last written checkpoint (a release or handoff writes it)."""
        return self._tracker.to_checkpoint()

    async def final_checkpoint(self) -> None:
        """Last chance on shutdown: record whatever prefix is acknowledged."""
        await self._checkpoint()
