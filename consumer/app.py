"""The consumer: a supervising coordinator over shard workers (the KCL's scheduler, in asyncio).

The consumer is handed its adapters (``consumer.ports``, ``core.ports``): the wiring place
(``recsys.runtime``) builds them, AWS clients included, and closes them. ``Consumer.run(stop)`` runs,
until ``stop`` is set:

- the **coordinator** (this task): renews held leases every ``lease_renew_interval_s`` (one
  statement for all of them, writing each shard's records/s and the process's CPU); every
  ``lease_take_interval_s`` lists the lease table, judges expiry on its own (injectable) clock, and
  takes free or expired leases or *requests* one from a busier worker per ``core.leases.plan_takes``;
  syncs the shard list into the table at start, periodically, and whenever a shard ends or reports
  children; looks for a newer model every ``model_refresh_interval_s``. A lease it fails to renew
  (``LeaseLost``) has its worker cancelled at once, without a checkpoint. A step that fails for an
  infrastructure reason (the database or AWS unreachable) is retried after a jittered backoff of at
  most its interval (``core.pacing``): an outage never makes the loop spin, and it is logged when it
  starts and when it ends, not at every attempt.
- one **shard worker** task per held lease (``consumer.shard.ShardWorker``). A worker that fails
  (a bug, a non-retriable error) gives its lease back; the shard is not taken again by this worker
  before a backoff (doubling up to a minute), so a failure that repeats never turns into a loop.

**Handoff** (a planned move, no duplicates): a renewal that finds a handoff request on one of our
leases stops that shard's worker the way a shutdown does (the batch in hand is finished and
acknowledged), then writes the acknowledged position and the new owner in one conditional update
(``LeaseTable.hand_over``). The requester finds the lease among its own rows at its next renewal
(or take round) and starts exactly there.

When ``stop`` is set: pending handoff requests of this worker are withdrawn; workers stop polling
and finish the batch in hand (delivered, checkpointed); leases keep being renewed meanwhile; after
``shutdown_deadline_s`` stragglers are cancelled (their batch is replayed by the successor:
at-least-once); then every lease is released with its acknowledged position (handed over instead
when someone asked for it), so a successor takes the shards at its next take round, not after a
lease expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from consumer import metrics
from consumer.balance import CpuMeter, LoadMeter
from consumer.config import ConsumerConfig
from consumer.kinesis import ShardInfo, StartAt, parse_initial_position
from consumer.leases import HeldLease, LeaseRow
from consumer.ports import DeadLetterSink, LeaseTable, RecordReader, RecordSink, Suppression
from consumer.shard import ConsumerStats, ShardOutcome, ShardWorker
from core.errors import DatabaseUnavailable, LeaseLost, RecsysError
from core.leases import ExpiryObserver, LoadPolicy, backoff_delay, plan_takes
from core.pacing import Periodic
from core.ports import LatestStore, Recommender
from infra.logs import bind, get_logger

__all__ = ["Consumer", "ConsumerStats", "default_worker_id"]

log = get_logger(__name__)
_RETAKE_BACKOFF_BASE_S = 1.0
_RETAKE_BACKOFF_CAP_S = 60.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Consumer:
    """A KCL-style consumer of ``config.stream`` delivering to ``config.delivery_stream``.

    Built by ``recsys.runtime.consumer``; every collaborator is a port, so tests hand in doubles
    (``recsys.testing``). ``clock`` (seconds, monotonic) is what lease expiry is judged by, so
    tests advance it instead of sleeping; ``rng`` makes the backoff jitter reproducible.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        *,
        leases: LeaseTable,
        reader: RecordReader,
        sink: RecordSink,
        dead_letters: DeadLetterSink,
        recommender: Recommender,
        latest: LatestStore,
        suppression: Suppression | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.tuning
        self._table = leases
        self._reader = reader
        self._sink = sink
        self.dead_letters = dead_letters
        self._recommender = recommender
        self._latest = latest
        self.suppression = suppression
        self._clock = clock
        self._rng = rng or random.Random()
        self.worker_id = leases.worker_id
        self.initial: StartAt = parse_initial_position(config.initial_position)
        self.stats = ConsumerStats()
        self.held: dict[str, HeldLease] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}  # per shard: finish the batch in hand and stop
        self._draining = asyncio.Event()
        self._loads = LoadMeter(self.cfg.load_window_s)
        self._cpu = CpuMeter(self.cfg.cpu_warmup_s)
        self._cpu_now: float | None = None
        self._policy = LoadPolicy(band=self.cfg.balance_band, cpu_ceiling=self.cfg.cpu_ceiling)
        self._next_request = 0.0  # monotonic: no handoff request before (the balancing cooldown)
        self._renew_soon = False  # a lease notification concerns us: renew (and so look) at once
        self._listen_retry_at = 0.0  # monotonic: when to try LISTEN again after a failure
        self.moves: dict[str, int] = {}  # leases this worker gained, by cause (tests and benchmarks read it)
        self._observer = ExpiryObserver(self.cfg.lease_duration_s)
        self._wake = asyncio.Event()
        self._resync = True
        self._failed_shards: dict[str, tuple[int, float]] = {}  # shard -> (failures, not before)
        self.rounds = 0  # completed take rounds (tests wait on it)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, checkpoint and release (see the module doc)."""
        with bind(worker=self.worker_id, stream=self.config.stream):
            await self._sync_shards()  # a missing stream is the user's mistake: raise it
            self._resync = False
            draining = self._draining
            log.info("consumer started")
            try:
                await self._coordinate(stop, draining)
            finally:
                await asyncio.shield(self._drain(draining))
            log.info("consumer stopped", extra={"fields": {"records_in": self.stats.records_in}})

    async def _coordinate(self, stop: asyncio.Event, draining: asyncio.Event) -> None:
        now = time.monotonic()
        renew = Periodic(self.cfg.lease_renew_interval_s, now + self.cfg.lease_renew_interval_s)
        take = Periodic(self.cfg.lease_take_interval_s, now)
        sync = Periodic(self.cfg.shard_sync_interval_s, now + self.cfg.shard_sync_interval_s)
        refresh = Periodic(self.cfg.model_refresh_interval_s, now + self.cfg.model_refresh_interval_s)
        steps: list[tuple[str, Periodic, Callable[[], Awaitable[None]]]] = [
            ("renewing leases", renew, self._renew_all),
            ("listing shards", sync, self._sync_shards),
            ("taking leases", take, lambda: self._take_round(draining)),
            ("looking for a newer model", refresh, self._refresh_model),
        ]
        while not stop.is_set():
            if self._resync:
                self._resync = False
                sync.due = 0.0
            if self._wake.is_set():
                self._wake.clear()
                take.due = min(take.due, time.monotonic()) if take.outage.since is None else take.due
            if self._renew_soon:
                self._renew_soon = False
                if renew.outage.since is None:
                    renew.due = min(renew.due, time.monotonic())
            for what, step, action in steps:
                if stop.is_set() or not step.is_due(time.monotonic()):
                    continue
                await self._attempt(what, step, action)
            timeout = max(0.0, min(s.due for _, s, _ in steps) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _first(stop, self._wake)

    async def _attempt(self, what: str, step: Periodic, action: Callable[[], Awaitable[None]]) -> None:
        """Run one coordinator step; schedule it again (sooner after a failure, never at once)."""
        try:
            await action()
        except Exception as exc:  # the supervising loop: log, keep the worker alive
            if isinstance(exc, RecsysError) and not exc.retriable:
                raise
            metrics.RECORDS_FAILED.labels("coordinator").inc()
            if step.failed(time.monotonic(), self._rng.random()):
                log.warning("%s failed; retrying with backoff (logged again when it recovers): %s", what, exc)
            else:
                log.debug("%s failed again (attempt %d): %s", what, step.outage.failures, exc)
            return
        ended = step.succeeded(time.monotonic())
        if ended is not None:
            down, attempts = ended
            log.info("%s works again after %.1f s and %d failed attempt(s)", what, down, attempts)

    async def _drain(self, draining: asyncio.Event) -> None:
        draining.set()
        for stop in self._stops.values():
            stop.set()
        try:
            await self._table.cancel_requests()
        except Exception as exc:  # noqa: BLE001 - a request left behind is handed over and released
            log.warning("withdrawing handoff requests failed: %s", exc)
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
                if lease.handoff_to is None or await self._hand_over(lease) is None:
                    await self._table.release(lease)
            except Exception as exc:  # noqa: BLE001 - leaving the lease to expire is the fallback
                log.warning("releasing %s failed (it will expire): %s", lease.shard_id, exc)
        self.held.clear()
        metrics.LEASES_HELD.set(0)

    async def _refresh_model(self) -> None:
        """Switch to a newer active model version, if there is one."""
        if await self._recommender.refresh():
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
        """One renewal round: every held lease in one write; act on what it found."""
        leases = list(self.held.values())
        loads = self._loads.rates(leases)
        cpu = self._cpu_now = self._cpu.reading()
        found = await self._table.renew_all(leases, loads, cpu)
        metrics.WORKER_RECORDS_PER_S.set(sum(loads.values()))
        if cpu is not None:
            metrics.WORKER_CPU.set(cpu)
        for lease in found.lost:
            if self.held.get(lease.shard_id) is lease:
                log.warning(
                    "lease lost; stopping the shard without a checkpoint",
                    extra={"fields": {"shard_id": lease.shard_id}},
                )
                self._drop(lease.shard_id)
        for lease, to in found.requested:
            stop = self._stops.get(lease.shard_id)
            if stop is not None and not stop.is_set():
                log.info(
                    "handing the lease over to %s after the batch in hand",
                    to,
                    extra={"fields": {"shard_id": lease.shard_id}},
                )
                stop.set()
        for lease in found.adopted:
            await self._adopt(lease, "balance")

    async def _adopt(self, lease: HeldLease, cause: str) -> None:
        """Start a lease that became ours (handed over, or taken); release it instead if we are
        stopping or its worker failed here recently."""
        failed = self._failed_shards.get(lease.shard_id)
        if self._draining.is_set() or (failed is not None and time.monotonic() < failed[1]):
            with contextlib.suppress(RecsysError):
                await self._table.release(lease)
            return
        if lease.shard_id in self.held:
            return
        self.moves[cause] = self.moves.get(cause, 0) + 1
        metrics.LEASE_MOVES.labels(cause).inc()
        self._start_worker(lease, self._draining)

    def _drop(self, shard_id: str) -> None:
        self.held.pop(shard_id, None)
        task = self._tasks.get(shard_id)
        if task is not None and not task.done():
            task.cancel()
        metrics.LEASES_HELD.set(len(self.held))

    def _on_lease_event(self, kind: str, worker: str) -> None:
        """A lease notification (``LeaseTable.listen``): a released lease may be taken now; a
        request to us or a lease handed to us is seen by a renewal, so renew now."""
        if kind == "released":
            self._wake.set()
        elif worker == self.worker_id:
            self._renew_soon = True
            self._wake.set()

    async def _listen(self) -> None:
        """Keep the lease notifications coming (a lost connection is reopened, at most every 30 s)."""
        now = time.monotonic()
        if now < self._listen_retry_at:
            return
        try:
            await self._table.listen(self._on_lease_event)
        except RecsysError as exc:
            self._listen_retry_at = now + 30.0
            log.info("lease notifications unavailable (the rounds still find every move): %s", exc)

    async def _take_round(self, draining: asyncio.Event) -> None:
        if draining.is_set():
            return
        await self._listen()
        rows = await self._table.list()
        views = [row.view() for row in rows]
        by_id = {row.shard_id: row for row in rows}
        seen_at = self._clock()
        expired = self._observer.observe(views, seen_at)
        # a lease that moved is not judged by load until its new owner reported a full window
        settle_s = 1.5 * self.cfg.load_window_s + self.cfg.lease_renew_interval_s
        plan = plan_takes(
            views,
            self.worker_id,
            self.held.keys(),
            expired,
            my_cpu=self._cpu_now,
            policy=self._policy,
            settling=self._observer.moved_within(settle_s, seen_at),
        )
        now = time.monotonic()
        for observed in plan.take:
            failed = self._failed_shards.get(observed.shard_id)
            if failed is not None and now < failed[1]:
                continue  # its worker failed recently: give it (and whatever broke it) a rest
            lease = await self._table.take(observed)
            if lease is not None:
                await self._adopt(lease, _cause(by_id[observed.shard_id], self.worker_id))
        if plan.requests and now >= self._next_request:
            asked = 0
            for wanted in plan.requests:
                if await self._table.request_handoff(wanted):
                    asked += 1
                    log.info(
                        "asked %s to hand a lease over",
                        wanted.owner,
                        extra={
                            "fields": {"shard_id": wanted.shard_id, "records_per_s": round(wanted.load, 1)}
                        },
                    )
            if asked:
                self._next_request = now + self.cfg.balance_cooldown_s
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
        stop = asyncio.Event()
        if draining.is_set():
            stop.set()
        self._stops[lease.shard_id] = stop
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
            draining=stop,
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
                # is retried (elsewhere at once, here after a backoff) from its checkpoint
                failures = self._failed_shards.get(lease.shard_id, (0, 0.0))[0] + 1
                delay = backoff_delay(
                    failures - 1, _RETAKE_BACKOFF_BASE_S, _RETAKE_BACKOFF_CAP_S, self._rng.random()
                )
                self._failed_shards[lease.shard_id] = (failures, time.monotonic() + delay)
                log.exception("shard worker failed; releasing its lease (not retaken here for %.0f s)", delay)
                await self._release(lease)
                return
            finally:
                # what the worker acknowledged past its last checkpoint (even when cancelled at the
                # shutdown deadline): a release or handoff records it, so a successor never replays it
                lease.unrecorded = worker.unrecorded()
                if self._stops.get(lease.shard_id) is stop:
                    del self._stops[lease.shard_id]
                with contextlib.suppress(KeyError):
                    metrics.MILLIS_BEHIND.remove(lease.shard_id)
            self._failed_shards.pop(lease.shard_id, None)
            if outcome is ShardOutcome.ENDED:
                await self._release(lease)
                self._resync = True
                self._wake.set()
            elif (
                lease.handoff_to is not None
                and await self._hand_over(lease) is None
                and not draining.is_set()
            ):
                await self._release(lease)  # the request was withdrawn: free for anyone

    async def _hand_over(self, lease: HeldLease) -> float | None:
        """Hand a stopped shard's lease to the worker that asked for it (a few tries when the
        database is briefly unreachable; after that the lease expires and is taken over)."""
        to = lease.handoff_to
        waited: float | None = None
        for attempt in range(4):
            try:
                waited = await asyncio.shield(self._table.hand_over(lease))
                break
            except DatabaseUnavailable as exc:
                log.warning("handing the lease over failed (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(backoff_delay(attempt, 0.2, 2.0, self._rng.random()))
        if waited is None:
            return None
        self._forget_lease(lease)
        metrics.HANDOFF_SECONDS.observe(waited)
        log.info(
            "lease handed over to %s, %.2f s after the request",
            to,
            waited,
            extra={"fields": {"shard_id": lease.shard_id}},
        )
        return waited

    def _forget_lease(self, lease: HeldLease) -> None:
        if self.held.get(lease.shard_id) is lease:
            del self.held[lease.shard_id]
        metrics.LEASES_HELD.set(len(self.held))

    async def _release(self, lease: HeldLease) -> None:
        self._forget_lease(lease)
        with contextlib.suppress(RecsysError):
            await asyncio.shield(self._table.release(lease))


def _cause(row: LeaseRow, me: str) -> str:
    """Why a lease became ours in a take round (a label of ``recsys_consumer_lease_moves``)."""
    if row.owner is not None and row.owner != me:
        return "expiry"  # its owner stopped renewing (kill -9, a partition): unplanned
    if row.owner == me:
        return "balance"  # handed over to us, found by the take round before the renewal
    return "initial" if row.owner_switches == 0 else "handoff"  # released by a stopping worker


async def _first(*events: asyncio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
