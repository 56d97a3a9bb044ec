"""Resharding against kinesis-mock (moto gets it wrong): split and merge mid-stream lose nothing,
parents are read to SHARD_END before their children start, and per-key order holds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from consumer.setup import wait_stream_active
from infra.aws import sync_client


async def test_split_and_merge_mid_stream(
    kinesis_mock: str, monkeypatch: pytest.MonkeyPatch, make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock)  # Kinesis here; Firehose, S3 on moto
    env = make_env(shards=2)
    kinesis = sync_client("kinesis")
    counter = iter(range(10_000))

    def put_round(n: int) -> list[str]:
        events = [h.event(700 + i % 40, next(counter)) for i in range(n)]
        return env.put(
            [json.dumps(e).encode() for e in events], key=lambda i: str(events[i]["customer_number"])
        )

    ids = put_round(200)
    stop = asyncio.Event()
    async with h.consumer(env, pool) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        try:
            await h.wait_for(lambda: len(env.outputs()) >= 50, 60, "the first deliveries")
            parent = kinesis.list_shards(StreamName=env.stream)["Shards"][0]
            low, high = (
                int(parent["HashKeyRange"]["StartingHashKey"]),
                int(parent["HashKeyRange"]["EndingHashKey"]),
            )
            kinesis.split_shard(
                StreamName=env.stream,
                ShardToSplit=parent["ShardId"],
                NewStartingHashKey=str((low + high) // 2),
            )
            await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
            ids += put_round(200)
            children = [
                s for s in kinesis.list_shards(StreamName=env.stream)["Shards"] if s.get("ParentShardId")
            ]
            assert len(children) == 2
            await h.wait_for(lambda: len(env.outputs()) >= 300, 60, "deliveries after the split")
            kinesis.merge_shards(
                StreamName=env.stream,
                ShardToMerge=children[0]["ShardId"],
                AdjacentShardToMerge=children[1]["ShardId"],
            )
            await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
            ids += put_round(200)
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 90, "every event")
        finally:
            stop.set()
            await task

    out = env.outputs()
    assert {o["event_id"] for o in out} == set(ids)
    rows = {
        r["shard_id"]: r
        for r in await pool.fetch(
            "SELECT shard_id, ended, parent_shard_ids, checkpoint_seq FROM kinesis_leases WHERE stream = $1",
            env.stream,
        )
    }
    assert len(rows) == 5  # two originals, two children of the split, one of the merge
    assert rows[parent["ShardId"]]["ended"] and rows[parent["ShardId"]]["checkpoint_seq"] == "SHARD_END"
    assert all(rows[c["ShardId"]]["ended"] for c in children)
    merged = [r for r in rows.values() if len(r["parent_shard_ids"]) == 2]
    assert len(merged) == 1 and not merged[0]["ended"]
    # per-key order: a customer's later event was never processed before an earlier one
    by_customer: dict[int, list[tuple[int, str]]] = {}
    for o in out:
        n = int(o["session_id"].rsplit("-", 1)[1])
        by_customer.setdefault(o["customer_number"], []).append((n, o["processed_at"]))
    for events in by_customer.values():
        stamps = [stamp for _, stamp in sorted(events)]
        assert stamps == sorted(stamps)
    # kinesis-mock's sequence numbers are real-sized: checkpoints compare them as numbers
    assert all(len(eid.split(":")[1]) > 40 for eid in ids)


async def test_update_shard_count_while_two_workers_consume(
    kinesis_mock: str, monkeypatch: pytest.MonkeyPatch, make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    """UpdateShardCount 2 -> 4 (UNIFORM_SCALING) under two workers: they follow the new shards,
    parents before children, and lose nothing."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock)
    env = make_env(shards=2)
    kinesis = sync_client("kinesis")
    counter = iter(range(10_000))

    def put_round(n: int) -> list[str]:
        events = [h.event(800 + i % 40, next(counter)) for i in range(n)]
        return env.put(
            [json.dumps(e).encode() for e in events], key=lambda i: str(events[i]["customer_number"])
        )

    ids = put_round(200)
    stops = [asyncio.Event(), asyncio.Event()]
    async with h.consumer(env, pool, worker_id="u0") as a, h.consumer(env, pool, worker_id="u1") as b:
        tasks = [asyncio.create_task(a.run(stops[0])), asyncio.create_task(b.run(stops[1]))]
        try:
            await h.wait_for(lambda: len(env.outputs()) >= 50, 60, "the first deliveries")
            kinesis.update_shard_count(
                StreamName=env.stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
            )
            await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
            ids += put_round(300)
            await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 240, "every event")
        finally:
            for stop in stops:
                stop.set()
            await asyncio.gather(*tasks)
    out = env.outputs()
    assert {o["event_id"] for o in out} == set(ids)
    rows = await pool.fetch(
        "SELECT shard_id, ended, parent_shard_ids FROM kinesis_leases WHERE stream = $1", env.stream
    )
    open_shards = [r for r in rows if not r["ended"]]
    assert len(open_shards) == 4 and all(r["parent_shard_ids"] for r in open_shards)
    by_customer: dict[int, list[tuple[int, str]]] = {}
    for o in out:
        n = int(o["session_id"].rsplit("-", 1)[1])
        by_customer.setdefault(o["customer_number"], []).append((n, o["processed_at"]))
    for events in by_customer.values():  # parents before children: per-key order holds
        stamps = [stamp for _, stamp in sorted(events)]
        assert stamps == sorted(stamps)
