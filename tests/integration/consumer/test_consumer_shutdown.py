"""Shutdown under a stuck dependency, and initial positions, on the moto server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg

from consumer.sink import FirehoseSink


class StuckSink(FirehoseSink):
    """Firehose that never answers (a hung dependency)."""

    entered: ClassVar[asyncio.Event] = asyncio.Event()

    async def put_batch(self, payloads: Sequence[bytes]) -> list[str | None]:
        type(self).entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hung_delivery_is_cut_at_the_shutdown_deadline_without_a_checkpoint(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    StuckSink.entered = asyncio.Event()
    env = make_env(shards=1, shutdown_deadline_s=1.0)
    env.put([json.dumps(h.event(800 + i, i)).encode() for i in range(10)])
    stop = asyncio.Event()
    async with h.consumer(env, pool, make_sink=StuckSink) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        await h.wait_for(StuckSink.entered.is_set, 60, "the delivery to start")
        stop.set()
        await asyncio.wait_for(task, 30)  # returns: the drain gave up at its deadline
    row = await pool.fetchrow(
        "SELECT owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream
    )
    assert row["owner"] is None  # released for a successor
    assert row["checkpoint_seq"] is None  # nothing acknowledged, nothing checkpointed
    assert consumer.stats.delivered == 0


async def test_latest_skips_what_was_there_before_the_first_start(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=1, initial_position="LATEST")
    old = env.put([json.dumps(h.event(900 + i, i)).encode() for i in range(5)])
    stop = asyncio.Event()
    async with h.consumer(env, pool) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        try:
            await h.wait_for(lambda: len(consumer.held) == 1, 30, "the lease")
            await h.wait_for(lambda: _polled(consumer), 30, "the first poll")
            new = env.put([json.dumps(h.event(950 + i, i)).encode() for i in range(5)])
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(new), 60, "the new events")
        finally:
            stop.set()
            await task
    delivered = {o["event_id"] for o in env.outputs()}
    assert delivered == set(new)
    assert not delivered & set(old)


def _polled(consumer: Any) -> bool:
    """The shard worker has made its first GetRecords (the gauge is removed when a shard stops)."""
    from prometheus_client import REGISTRY

    shard = next(iter(consumer.held), None)
    return (
        shard is not None
        and REGISTRY.get_sample_value("recsys_consumer_millis_behind_latest", {"shard_id": shard}) is not None
    )
