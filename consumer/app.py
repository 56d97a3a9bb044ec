"""The consumer: a supervising coordinator over shard workers (the KCL's scheduler, in asyncio).

``Consumer.run(stop)`` owns the AWS clients and runs, until ``stop`` is set:

- the **coordinator** (this task): renews held leases every ``lease_renew_interval_s``; every
  ``lease_take_interval_s`` lists the lease table, judges expiry on its own (injectable) clock, and
  takes or steals per ``core.leases.plan_takes``; syncs the shard list into the table at
  start, periodically, and whenever a shard ends or reports children. A lease it fails to renew
  (``LeaseLost``) has its worker cancelled at once, without a checkpoint.
- one **shard worker** task per held lease (``consumer.shard.ShardWorker``).

When ``stop`` is set: workers stop polling and finish the batch in hand (delivered, checkpointed);
leases keep being renewed meanwhile; after ``shutdown_deadline_s`` stragglers are cancelled
(their batch is replayed by the successor: at-least-once); then every lease is released so a
successor takes the shards at its next take round, not after a lease expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg

from consumer import metrics
from consumer.config import ConsumerConfig
from consumer.deadletters import DeadLetterStore
from consumer.kinesis import KinesisReader, ShardInfo, StartAt, parse_initial_position
from consumer.leases import HeldLease, PgLeaseTable
from consumer.shard import ConsumerStats, ShardOutcome, ShardWorker
from consumer.sink import FirehoseSink
from core.errors import LeaseLost, RecsysError
from core.leases import ExpiryObserver, plan_takes
from core.ports import LatestStore, Recommender
from infra.aws import region
from infra.logs import bind, get_logger
from infra.suppression import SuppressionList

__all__ = ["Consumer", "ConsumerStats"]

log = get_logger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Consumer:
    """A KCL-style consumer of ``config.stream`` delivering to ``config.delivery_stream``.

    ``sink_class`` lets a test put a deliberately failing Firehose sink in; ``clock`` (seconds,
    monotonic) is what lease expiry is judged by, so tests advance it instead of sleeping.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        pool: asyncpg.Pool[Any],
        recommender: Recommender,
        latest: LatestStore,
        *,
        dead_letters: DeadLetterStore | None = None,
        sink_class: type[FirehoseSink] = FirehoseSink,
        clock: Callable[[], float] = time.monotonic,
        worker_id: str | None = None,
        aws_session: Any | None = None,
        suppression: SuppressionList | None = None,
    ) -> None:
        self.config = config
        self.suppression = suppression
        self.cfg = config.tuning
        self._pool = pool
        self._recommender = recommender
        self._latest = latest
        self.dead_letters = dead_letters or DeadLetterStore(config.dead_letters)
        self._sink_class = sink_class
        self._clock = clock
        self._session = aws_session
        self.worker_id = worker_id or self.cfg.worker_id or default_worker_id()
        self.initial: StartAt = parse_initial_position(config.initial_position)
        self.stats = ConsumerStats()
        self.held: dict[str, HeldLease] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._observer = ExpiryObserver(self.cfg.lease_duration_s)
        self._wake = asyncio.Event()
        self._resync = True
        self._rng = random.Random()
        self.rounds = 0  # completed take rounds (tests wait on it)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, checkpoint and release (see the module doc)."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        session = self._session or get_session()
        config = AioConfig(
            region_name=region(),
            connect_timeout=self.cfg.aws_call_timeout_s,
            read_timeout=self.cfg.aws_call_timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=50,
        )
        with bind(worker=self.worker_id, stream=self.config.stream):
            async with AsyncExitStack() as stack:
                kinesis = await stack.enter_async_context(session.create_client("kinesis", config=config))
                firehose = await stack.enter_async_context(session.create_client("firehose", config=config))
                self._reader = KinesisReader(kinesis, self.config.stream, self.cfg.aws_call_timeout_s)
                self._sink = self._sink_class(
                    firehose, self.config.delivery_stream, timeout_s=self.cfg.aws_call_timeout_s
                )
                self._table = PgLeaseTable(self._pool, self.config.stream, self.worker_id)
                await self._sync_shards()  # a missing stream is the user's mistake: raise it
                draining = asyncio.Event()
                log.info("consumer started")
                try:
                    await self._coordinate(stop, draining)
                finally:
                    await asyncio.shield(self._drain(draining))
                log.info("consumer stopped", extra={"fields": {"records_in": self.stats.records_in}})

    async def _coordinate(self, stop: asyncio.Event, draining: asyncio.Event) -> None:
        now = time.monotonic()
        next_renew = now + self.cfg.lease_renew_interval_s
        next_take = now
        next_sync = now + self.cfg.shard_sync_interval_s
        next_refresh = now + self.cfg.model_refresh_interval_s
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    await self._renew_all()
                    next_renew = now + self.cfg.lease_renew_interval_s
                if self._resync or now >= next_sync:
                    self._resync = False
                    await self._sync_shards()
                    next_sync = now + self.cfg.shard_sync_interval_s
                if now >= next_take or self._wake.is_set():
                    self._wake.clear()
                    await self._take_round(draining)
                    next_take = now + self.cfg.lease_take_interval_s
                if now >= next_refresh:
                    next_refresh = now + self.cfg.model_refresh_interval_s
                    await self._refresh_model()
            except Exception as exc:  # the supervising loop: log, keep the worker alive
                if isinstance(exc, RecsysError) and not exc.retriable:
                    raise
                log.warning("coordinator round failed, retrying: %s", exc)
            timeout = max(0.0, min(next_renew, next_take, next_sync) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _first(stop, self._wake)

    async def _drain(self, draining: asyncio.Event) -> None:
        draining.set()
        deadline = time.monotonic() + self.cfg.shutdown_deadline_s
        while self._tasks and time.monotonic() < deadline:
            wait = min(self.cfg.lease_renew_interval_s, deadline - time.monotonic())
            await asyncio.wait(list(self._tasks.values()), timeout=max(wait, 0.0))
            with contextlib.suppress(Exception):
                await self._renew_all()
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            log.warning("shutdown deadline reached: %d shard(s) cancelled mid-batch", len(self._tasks))
        for lease in list(self.held.values()):
            try:
                await self._table.release(lease)
            except Exception as exc:  # noqa: BLE001 - leaving the lease to expire is the fallback
                log.warning("releasing %s failed (it will expire): %s", lease.shard_id, exc)
        self.held.clear()
        metrics.LEASES_HELD.set(0)

    async def _refresh_model(self) -> None:
        """Switch to a newer active model version, if the recommender can (the model store's can)."""
        refresh = getattr(self._recommender, "refresh", None)
        if refresh is not None and await refresh():
            log.info("switched to model version %s", self._recommender.model_version)

    # ------------------------------------------------------------------ leases
    async def _sync_shards(self) -> None:
        shards = await self._reader.list_shards()
        added = await self._table.add_shards([(s.shard_id, s.parents) for s in shards])
        if added:
            log.info("added %d shard lease(s)", added)
            self._wake.set()

    async def _on_children(self, children: list[ShardInfo]) -> None:
        await self._table.add_shards([(c.shard_id, c.parents) for c in children])
        self._wake.set()

    async def _renew_all(self) -> None:
        for shard_id, lease in list(self.held.items()):
            try:
                await self._table.renew(lease)
            except LeaseLost:
                log.warning(
                    "lease lost; stopping the shard without a checkpoint",
                    extra={"fields": {"shard_id": shard_id}},
                )
                self._drop(shard_id)

    def _drop(self, shard_id: str) -> None:
        self.held.pop(shard_id, None)
        task = self._tasks.get(shard_id)
        if task is not None and not task.done():
            task.cancel()
        metrics.LEASES_HELD.set(len(self.held))

    async def _take_round(self, draining: asyncio.Event) -> None:
        if draining.is_set():
            return
        rows = await self._table.list()
        views = [row.view() for row in rows]
        expired = self._observer.observe(views, self._clock())
        plan = plan_takes(views, self.worker_id, self.held.keys(), expired)
        wanted = list(plan.take)
        if plan.steal is not None:
            wanted.append(plan.steal)
            log.info(
                "stealing a lease from %s",
                plan.steal.owner,
                extra={"fields": {"shard_id": plan.steal.shard_id}},
            )
        for observed in wanted:
            lease = await self._table.take(observed)
            if lease is not None:
                self._start_worker(lease, draining)
        self.rounds += 1

    def _start_worker(self, lease: HeldLease, draining: asyncio.Event) -> None:
        self.held[lease.shard_id] = lease
        metrics.LEASES_HELD.set(len(self.held))
        task = asyncio.create_task(self._run_shard(lease, draining), name=f"shard-{lease.shard_id}")
        self._tasks[lease.shard_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for shard_id, current in list(self._tasks.items()):
            if current is task:
                del self._tasks[shard_id]
        self._wake.set()

    async def _run_shard(self, lease: HeldLease, draining: asyncio.Event) -> None:
        worker = ShardWorker(
            lease=lease,
            table=self._table,
            reader=self._reader,
            sink=self._sink,
            dead_letters=self.dead_letters,
            recommender=self._recommender,
            latest=self._latest,
            settings=self.cfg,
            initial=self.initial,
            draining=draining,
            stats=self.stats,
            on_children=self._on_children,
            recommend_k=self.cfg.recommend_k,
            suppression=self.suppression,
        )
        with bind(shard_id=lease.shard_id):
            log.info("processing shard", extra={"fields": {"checkpoint": lease.checkpoint_seq}})
            try:
                outcome = await worker.run()
            except LeaseLost as exc:
                log.warning("lease lost: %s", exc)
                self._forget_lease(lease)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # a bug or a non-retriable failure in one shard: give the lease back so the shard
                # is retried (here or elsewhere) from its checkpoint; other shards go on
                log.exception("shard worker failed; releasing its lease")
                await self._release(lease)
                return
            finally:
                with contextlib.suppress(KeyError):
                    metrics.MILLIS_BEHIND.remove(lease.shard_id)
            if outcome is ShardOutcome.ENDED:
                await self._release(lease)
                self._resync = True
                self._wake.set()

    def _forget_lease(self, lease: HeldLease) -> None:
        if self.held.get(lease.shard_id) is lease:
            del self.held[lease.shard_id]
        metrics.LEASES_HELD.set(len(self.held))

    async def _release(self, lease: HeldLease) -> None:
        self._forget_lease(lease)
        with contextlib.suppress(RecsysError):
            await asyncio.shield(self._table.release(lease))


async def _first(*events: asyncio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
