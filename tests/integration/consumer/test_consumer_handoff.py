"""Planned lease moves never replay a record (issue 19): a rolling deploy of consumer processes,
scale-out 1 -> 2 -> 4 and back, while events arrive at a steady rate: 0 lost, 0 duplicates. An
unplanned loss (kill -9 in the middle of a handoff) is still at-least-once: 0 lost."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg

PROCESS = Path(__file__).with_name("consumer_process.py")
# long enough that a process starved of CPU on a busy machine never looks dead: every move in these
# tests must be a planned one (a handoff or a release), never an expiry
LEASES = {"lease_duration_s": 10.0, "lease_renew_interval_s": 0.5, "lease_take_interval_s": 0.5}


def _duplicates(outputs: list[dict[str, Any]]) -> int:
    return sum(n - 1 for n in Counter(o["event_id"] for o in outputs).values())


class Traffic:
    """Events put at a steady pace (a few every tenth of a second) until stopped; their ids."""

    def __init__(self, env: Any, h: Any, per_tick: int = 4) -> None:
        self.env, self.h, self.per_tick = env, h, per_tick
        self.ids: list[str] = []
        self._n = 0
        # the partition key of the i-th event of a tick (default: its session, spread over the shards)
        self.key: Callable[[int, list[dict[str, Any]]], str] = lambda i, events: str(events[i]["session_id"])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            events = [self.h.event(900 + (self._n + i) % 97, self._n + i) for i in range(self.per_tick)]
            self._n += self.per_tick
            self.ids += await asyncio.to_thread(
                self.env.put,
                [json.dumps(e).encode() for e in events],
                lambda i, ev=events: self.key(i, ev),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), 0.1
                )  # the pace of the producer, not a wait on the consumer


@contextlib.asynccontextmanager
async def _traffic(env: Any, h: Any) -> AsyncIterator[Traffic]:
    traffic, stop = Traffic(env, h), asyncio.Event()
    task = asyncio.create_task(traffic.run(stop))
    try:
        yield traffic
    finally:
        stop.set()
        await task


def _spawn(env: Any, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    environ = env.process_environ(tmp, worker_id=name, poll_interval_s="0.2", **LEASES)
    with (tmp / f"{name}.log").open("ab") as log:
        return subprocess.Popen([sys.executable, str(PROCESS)], env=environ, stdout=log, stderr=log)


async def _owners(pool: asyncpg.Pool[Any], stream: str) -> dict[str, str | None]:
    rows = await pool.fetch("SELECT shard_id, owner FROM kinesis_leases WHERE stream = $1", stream)
    return {r["shard_id"]: r["owner"] for r in rows}


def _balanced(owners: dict[str, str | None], workers: set[str]) -> bool:
    """Every shard owned by one of ``workers``, each within one lease of its fair share."""
    if not owners or any(o not in workers for o in owners.values()):
        return False
    counts = Counter(owners.values())
    fair = len(owners) / len(workers)
    return all(abs(counts.get(w, 0) - fair) < 1 for w in workers)


async def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, await asyncio.to_thread(lambda: log.read_text()[-3000:])


async def test_rolling_deploy_of_three_processes_loses_and_repeats_nothing(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any, tmp_path: Path
) -> None:
    env = make_env(shards=8, **LEASES)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with _traffic(env, h) as traffic:
            for name in ("old-0", "old-1", "old-2"):
                procs[name] = _spawn(env, tmp_path, name)
            await h.wait_for(
                lambda: _balanced_now(pool, env, set(procs)), 120, "three processes sharing eight shards"
            )
            for i in range(3):  # replace them one by one: SIGTERM, then a new process
                await _stop(procs.pop(f"old-{i}"), tmp_path / f"old-{i}.log")
                procs[f"new-{i}"] = _spawn(env, tmp_path, f"new-{i}")
                await h.wait_for(
                    lambda: _balanced_now(pool, env, set(procs)), 120, f"the leases balanced after step {i}"
                )
        ids = set(traffic.ids)
        await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= ids, 120, "every event delivered")
    finally:
        for name, proc in procs.items():
            with contextlib.suppress(Exception):
                await _stop(proc, tmp_path / f"{name}.log")
    out = env.outputs()
    assert {o["event_id"] for o in out} == ids  # nothing lost
    assert _duplicates(out) == 0  # every move was planned: nothing delivered twice
    switches = await pool.fetchval(
        "SELECT sum(owner_switches) FROM kinesis_leases WHERE stream = $1", env.stream
    )
    assert switches >= 8 + 3  # the first takes, and at least one move per replaced process


async def _balanced_now(pool: asyncpg.Pool[Any], env: Any, workers: set[str]) -> bool:
    return _balanced(await _owners(pool, env.stream), workers)


async def test_scale_out_one_two_four_and_back_in_process_without_duplicates(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=8, **LEASES)
    running: dict[str, tuple[Any, asyncio.Event, asyncio.Task[None]]] = {}
    async with contextlib.AsyncExitStack() as stack, _traffic(env, h) as traffic:

        async def start(name: str) -> None:
            consumer = await stack.enter_async_context(h.consumer(env, pool, worker_id=name))
            stop = asyncio.Event()
            running[name] = (consumer, stop, asyncio.create_task(consumer.run(stop)))

        async def stop(name: str) -> None:
            _, event, task = running.pop(name)
            event.set()
            await task

        try:
            for step in (["w0"], ["w0", "w1"], ["w0", "w1", "w2", "w3"], ["w0", "w1"], ["w0"]):
                for name in [n for n in running if n not in step]:
                    await stop(name)
                for name in [n for n in step if n not in running]:
                    await start(name)
                await h.wait_for(lambda: _balanced_now(pool, env, set(running)), 120, f"balanced over {step}")
        finally:
            for name in list(running):
                await stop(name)
    ids = set(traffic.ids)
    async with h.consumer(env, pool, worker_id="last") as last:
        halt = asyncio.Event()
        task = asyncio.create_task(last.run(halt))
        try:
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= ids, 120, "every event")
        finally:
            halt.set()
            await task
    out = env.outputs()
    assert {o["event_id"] for o in out} == ids
    assert _duplicates(out) == 0


async def test_kill_9_during_a_handoff_loses_nothing(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any, tmp_path: Path
) -> None:
    env = make_env(shards=4, lease_duration_s=3.0, lease_renew_interval_s=0.5, lease_take_interval_s=0.3)
    ids = env.put(
        [json.dumps(h.event(300 + i % 60, i)).encode() for i in range(1600)], key=lambda i: str(i % 60)
    )
    proc = _spawn(env, tmp_path, "victim")
    stop = asyncio.Event()
    try:
        await h.wait_for(
            lambda: _balanced_now(pool, env, {"victim"}) or proc.poll() is not None, 90, "victim owning all"
        )
        assert proc.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
        # paused, the victim cannot answer the survivor's request (and still looks alive to it for a
        # lease duration, so the survivor requests rather than takes); then it dies mid-handoff
        proc.send_signal(signal.SIGSTOP)
        async with h.consumer(env, pool, worker_id="survivor") as survivor:
            task = asyncio.create_task(survivor.run(stop))
            try:

                async def requested() -> bool:
                    n = await pool.fetchval(
                        "SELECT count(*) FROM kinesis_leases WHERE stream = $1 AND handoff_to IS NOT NULL",
                        env.stream,
                    )
                    return bool(n)

                await h.wait_for(requested, 60, "a handoff request")
                proc.send_signal(signal.SIGKILL)  # in the middle of the handoff
                await asyncio.to_thread(proc.wait, 30)
                await h.wait_for(lambda: len(survivor.held) == 4, 60, "the survivor owning every shard")
                await h.wait_for(
                    lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 120, "every event"
                )
            finally:
                stop.set()
                await task
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {o["event_id"] for o in env.outputs()} == set(ids)
    assert survivor.moves.get("expiry", 0) >= 1  # what the victim held was taken after it expired


def _keys_per_shard(env: Any) -> list[str]:
    """One partition key landing in each shard (Kinesis hashes keys with MD5 into the shards' ranges)."""
    shards = env.kinesis().list_shards(StreamName=env.stream)["Shards"]
    keys: list[str] = []
    for shard in sorted(shards, key=lambda s: s["ShardId"]):
        low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
        keys.append(
            next(
                k
                for k in (f"key-{i}" for i in range(100_000))
                if low <= int.from_bytes(hashlib.md5(k.encode()).digest(), "big") <= high
            )
        )
    return keys


async def test_skewed_traffic_is_balanced_by_load_and_then_left_alone(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    """One shard carries 10x the others: the hot shard ends with a worker of its own (the best split
    of 10 + 7 x 1 over two workers), and once balanced no lease moves for many more rounds."""
    env = make_env(shards=8, cpu_warmup_s=600, load_window_s=5.0, balance_cooldown_s=1.0, **LEASES)
    keys = _keys_per_shard(env)
    hot = f"shardId-{0:012d}"
    traffic = Traffic(env, h, per_tick=0)
    pattern = [keys[0]] * 10 + keys[1:]  # per tick: 10 events on the hot shard, 1 on each other
    traffic.per_tick = len(pattern)
    traffic.key = lambda i, _events: pattern[i % len(pattern)]
    stop_traffic = asyncio.Event()
    producer = asyncio.create_task(traffic.run(stop_traffic))
    stops = [asyncio.Event(), asyncio.Event()]
    async with contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(h.consumer(env, pool, worker_id=f"w{i}")) for i in range(2)
        ]
        tasks = [asyncio.create_task(workers[0].run(stops[0]))]
        try:
            await h.wait_for(lambda: len(workers[0].held) == 8, 60, "w0 holding every shard")
            # w0 has measured its shards' loads before w1 starts
            await h.wait_for(_loads_measured(pool, env), 60, "loads written with the renewals")
            tasks.append(asyncio.create_task(workers[1].run(stops[1])))

            def split() -> bool:
                owner = next((w for w in workers if hot in w.held), None)
                other = next((w for w in workers if w is not owner), None)
                return (
                    owner is not None and other is not None and len(owner.held) == 1 and len(other.held) == 7
                )

            await h.wait_for(split, 120, "the hot shard with a worker of its own")
            moved = sum(sum(w.moves.values()) for w in workers)
            rounds = [w.rounds for w in workers]
            await h.wait_for(
                lambda: all(w.rounds >= r + 20 for w, r in zip(workers, rounds, strict=True)), 120
            )
            assert sum(sum(w.moves.values()) for w in workers) == moved  # balanced: no more moves
            assert split()
            loads = await pool.fetch(
                "SELECT owner, sum(load_rps) AS load FROM kinesis_leases WHERE stream = $1 GROUP BY owner",
                env.stream,
            )
            per = sorted(float(r["load"]) for r in loads)
            assert len(per) == 2 and per[0] > 0  # both carry load; the hot one carries the hot shard
        finally:
            stop_traffic.set()
            await producer
            for stop in stops:
                stop.set()
            await asyncio.gather(*tasks)
    assert _duplicates(env.outputs()) == 0


def _loads_measured(pool: asyncpg.Pool[Any], env: Any) -> Any:
    async def measured() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM kinesis_leases WHERE stream = $1 AND load_rps > 0", env.stream
        )
        return bool(n == 8)

    return measured
