"""Leases across workers on the moto server and the embedded PostgreSQL: spread, steal, take over
after a clean stop, after SIGTERM, and after kill -9 (expiry driven by an injected clock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from recsys.testing import FakeClock

PROCESS = Path(__file__).with_name("consumer_process.py")


def _counts(*consumers: Any) -> list[int]:
    """Leases held per worker, once no shard is claimed by two of them.

    Right after a steal the victim still lists the shard until its next renewal fails (at most one
    renew interval); it cannot checkpoint meanwhile (every write is conditional on the counter).
    """
    held = [set(c.held) for c in consumers]
    for i, a in enumerate(held):
        for b in held[i + 1 :]:
            if a & b:
                return []
    return sorted(len(x) for x in held)


async def test_leases_spread_over_two_and_three_workers_and_a_stopped_one_is_taken_over(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=4)
    stops = [asyncio.Event() for _ in range(3)]
    tasks = []
    async with contextlib.AsyncExitStack() as built:
        workers = [
            await built.enter_async_context(h.consumer(env, pool, worker_id=f"w{i}")) for i in range(3)
        ]
        await _spread_then_take_over(env, h, workers, stops, tasks)
    rows = await pool.fetch("SELECT owner, owner_switches FROM kinesis_leases WHERE stream = $1", env.stream)
    assert all(r["owner"] is None for r in rows)
    assert sum(r["owner_switches"] for r in rows) >= 4 + 2 + 1 + 1


async def _spread_then_take_over(
    env: Any, h: Any, workers: list[Any], stops: list[asyncio.Event], tasks: list[asyncio.Task[None]]
) -> None:
    try:
        tasks.append(asyncio.create_task(workers[0].run(stops[0])))
        await h.wait_for(lambda: _counts(workers[0]) == [4], 30, "one worker holding all four")
        tasks.append(asyncio.create_task(workers[1].run(stops[1])))
        await h.wait_for(lambda: _counts(*workers[:2]) == [2, 2], 30, "two workers with two each")
        tasks.append(asyncio.create_task(workers[2].run(stops[2])))
        await h.wait_for(lambda: _counts(*workers) == [1, 1, 2], 30, "three workers: 2, 1, 1")
        # a clean stop releases at once: the others take over without waiting for an expiry
        stops[0].set()
        await tasks[0]
        await h.wait_for(lambda: _counts(*workers[1:]) == [2, 2], 30, "the survivors with two each")
        ids = env.put([json.dumps(h.event(400 + i, i)).encode() for i in range(200)])
        await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 60, "delivery")
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)


def _spawn(env: Any, tmp: Path, **extra: str) -> subprocess.Popen[bytes]:
    environ = env.process_environ(
        tmp,
        lease_duration_s=3,
        lease_renew_interval_s=0.5,
        lease_take_interval_s=0.3,
        get_records_limit=40,
        worker_id="process-a",
    )
    environ.update(extra)
    with (tmp / "consumer-a.log").open("ab") as log:
        return subprocess.Popen([sys.executable, str(PROCESS)], env=environ, stdout=log, stderr=log)


async def test_kill_9_at_a_random_point_then_a_successor_loses_nothing(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any, tmp_path: Path
) -> None:
    env = make_env(shards=2)
    ids = env.put(
        [json.dumps(h.event(500 + i % 50, i)).encode() for i in range(2500)], key=lambda i: str(i % 50)
    )
    threshold = random.Random().randint(40, 900)
    proc = _spawn(env, tmp_path)
    try:
        await h.wait_for(lambda: len(env.outputs()) >= threshold or proc.poll() is not None, 60, "progress")
        assert proc.poll() is None, (tmp_path / "consumer-a.log").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    before = len({o["event_id"] for o in env.outputs()})

    clock = FakeClock()
    stop = asyncio.Event()
    async with h.consumer(env, pool, worker_id="successor", clock=clock) as successor:
        task = asyncio.create_task(successor.run(stop))
        try:
            await h.wait_for(lambda: successor.rounds >= 3, 30, "the successor's first rounds")
            # the dead worker still looks alive on the successor's clock: one lease may be stolen for
            # balance (2 vs 0), the other stays with it until it expires
            assert len(successor.held) <= 1
            clock.advance(3.0)
            await h.wait_for(lambda: len(successor.held) == 2, 30, "the take-over after one lease duration")
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 90, "every event")
        finally:
            stop.set()
            await task
    out = env.outputs()
    assert {o["event_id"] for o in out} == set(ids)
    assert before < len(ids)
    # duplicates (the batch in flight at the kill) carry the same id and the same answer
    first: dict[str, Any] = {}
    for o in out:
        seen = first.setdefault(o["event_id"], o)
        assert seen["recommended_items"] == o["recommended_items"]


async def test_sigterm_drains_releases_and_a_successor_resumes_at_once(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any, tmp_path: Path
) -> None:
    env = make_env(shards=2)
    ids = env.put(
        [json.dumps(h.event(600 + i % 30, i)).encode() for i in range(600)], key=lambda i: str(i % 30)
    )
    proc = _spawn(env, tmp_path)
    try:
        await h.wait_for(lambda: len(env.outputs()) >= 40 or proc.poll() is not None, 60, "progress")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, (tmp_path / "consumer-a.log").read_text()
    rows = await pool.fetch("SELECT owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream)
    assert all(r["owner"] is None for r in rows)
    delivered = {o["event_id"] for o in env.outputs()}
    # every checkpoint covers only delivered records
    for r in rows:
        if r["checkpoint_seq"] is not None:
            assert any(eid.endswith(":" + r["checkpoint_seq"]) for eid in delivered)

    clock = FakeClock()  # never advanced: only released leases can be taken
    stop = asyncio.Event()
    async with h.consumer(env, pool, worker_id="successor", clock=clock) as successor:
        task = asyncio.create_task(successor.run(stop))
        try:
            await h.wait_for(
                lambda: len(successor.held) == 2, 30, "the successor taking both released leases"
            )
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 60, "every event")
        finally:
            stop.set()
            await task
    assert {o["event_id"] for o in env.outputs()} == set(ids)
