"""Resharding against kinesis-mock (moto gets it wrong): split and merge mid-stream lose nothing,
parents are read to SHARD_END before their children start, and per-key order holds; the same on an
ON_DEMAND stream (the deploy stack's ``StreamMode`` option) resharded while a producer keeps putting."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime
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
    assert_per_key_order(out)
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
    assert_per_key_order(out)  # parents before children: per-key order holds


def first_copies(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event's first processing (a lease that expired replays a batch: at-least-once)."""
    first: dict[str, dict[str, Any]] = {}
    for o in sorted(out, key=lambda o: datetime.fromisoformat(o["processed_at"])):
        first.setdefault(o["event_id"], o)
    return list(first.values())


class Deliveries:
    """What Firehose wrote so far, each S3 object read once, off the event loop (a read of every
    object on the loop at each poll would delay the consumers' lease renewals)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self._keys: set[str] = set()
        self._ids: set[str] = set()

    def _read(self) -> set[str]:
        s3 = sync_client("s3")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.env.bucket, Prefix="out/"):
            for obj in page.get("Contents", []):
                if obj["Key"] in self._keys:
                    continue
                body = s3.get_object(Bucket=self.env.bucket, Key=obj["Key"])["Body"].read()
                self._ids.update(json.loads(line)["event_id"] for line in body.splitlines() if line.strip())
                self._keys.add(obj["Key"])
        return set(self._ids)

    async def ids(self) -> set[str]:
        return await asyncio.to_thread(self._read)


def assert_per_key_order(out: list[dict[str, Any]]) -> None:
    """A customer's later event was never processed before an earlier one."""
    by_customer: dict[int, list[tuple[int, datetime]]] = {}
    for o in out:
        n = int(o["session_id"].rsplit("-", 1)[1])
        by_customer.setdefault(o["customer_number"], []).append(
            (n, datetime.fromisoformat(o["processed_at"]))
        )
    for events in by_customer.values():
        stamps = [stamp for _, stamp in sorted(events)]
        assert stamps == sorted(stamps)


def assert_parents_first(out: list[dict[str, Any]], parents: dict[str, list[str]]) -> set[str]:
    """Every child shard's first record was processed after its parents' last one; returns the
    children checked (those with records, as had at least one of their parents)."""
    stamps: dict[str, list[datetime]] = {}
    for o in out:
        shard = o["event_id"].split(":", 1)[0]
        stamps.setdefault(shard, []).append(datetime.fromisoformat(o["processed_at"]))
    checked: set[str] = set()
    for child, of in parents.items():
        for parent in of:
            if child in stamps and parent in stamps:
                assert min(stamps[child]) > max(stamps[parent]), f"{child} started before {parent} ended"
                checked.add(child)
    return checked


class Producer:
    """Puts 10 events every 100 ms from a thread until stopped; keeps the ids Kinesis accepted
    (a call refused while the stream is being resharded puts nothing; ``refused`` counts them)."""

    def __init__(self, env: Any, h: Any, first_customer: int) -> None:
        self.env, self.h, self.first = env, h, first_customer
        self.ids: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self._counter: Iterator[int] = iter(range(1_000_000))

    def _run(self) -> None:
        kinesis = sync_client("kinesis")
        while not self._stop.is_set():
            numbers = [next(self._counter) for _ in range(10)]
            events = [self.h.event(self.first + n % 40, n) for n in numbers]  # 40 keys in turn
            try:
                resp = kinesis.put_records(
                    StreamName=self.env.stream,
                    Records=[
                        {"PartitionKey": str(e["customer_number"]), "Data": json.dumps(e).encode()}
                        for e in events
                    ],
                )
            except Exception:
                self.refused += len(events)
            else:
                for r in resp["Records"]:
                    if r.get("ErrorCode"):
                        self.refused += 1
                    else:
                        self.ids.append(f"{r['ShardId']}:{r['SequenceNumber']}")
            self._stop.wait(0.1)  # the production rate (100 events/s), not a synchronisation

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        shards += page["Shards"]
        if not page.get("NextToken"):
            return shards
        kwargs = {"NextToken": page["NextToken"]}


async def test_on_demand_stream_resharded_while_consumed(
    kinesis_mock: str, monkeypatch: pytest.MonkeyPatch, make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    """An ON_DEMAND stream consumed by two workers while a producer keeps putting: it scales up
    (UpdateShardCount 4 -> 8, which kinesis-mock accepts on an on-demand stream; AWS refuses it
    there and scales an on-demand stream itself, by splitting shards the same way), then is switched
    to PROVISIONED (UpdateStreamMode) and scaled down (UpdateShardCount -> 4: merges). The workers
    follow: a child shard's first record is processed after its parents' last, nothing is lost, and
    nothing is delivered twice unless a lease expired (an unplanned move: at-least-once)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock)
    env = make_env(on_demand=True)
    kinesis = sync_client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName=env.stream)["StreamDescriptionSummary"]
    assert summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert summary["OpenShardCount"] == 4  # an on-demand stream starts with 4 shards

    seen = Deliveries(env)

    async def delivered_from(shards: set[str]) -> bool:
        """Records of every one of ``shards`` delivered (the producer's 40 keys reach them all)."""
        return shards <= {eid.split(":", 1)[0] for eid in await seen.ids()}

    async def delivered(ids: set[str]) -> bool:
        return ids <= await seen.ids()

    stops = [asyncio.Event(), asyncio.Event()]
    with Producer(env, h, first_customer=900) as producer:
        async with h.consumer(env, pool, worker_id="d0") as a, h.consumer(env, pool, worker_id="d1") as b:
            tasks = [asyncio.create_task(a.run(stops[0])), asyncio.create_task(b.run(stops[1]))]
            try:
                before = {s["ShardId"] for s in _shards(kinesis, env.stream)}
                await h.wait_for(lambda: delivered_from(before), 60, "deliveries from every shard")
                kinesis.update_shard_count(
                    StreamName=env.stream, TargetShardCount=8, ScalingType="UNIFORM_SCALING"
                )
                await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
                split = {s["ShardId"] for s in _shards(kinesis, env.stream)} - before
                assert len(split) == 8
                await h.wait_for(
                    lambda: delivered_from(split), 120, "deliveries from every child of the split"
                )
                kinesis.update_stream_mode(
                    StreamARN=summary["StreamARN"], StreamModeDetails={"StreamMode": "PROVISIONED"}
                )
                await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
                mode = kinesis.describe_stream_summary(StreamName=env.stream)["StreamDescriptionSummary"]
                assert mode["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
                kinesis.update_shard_count(
                    StreamName=env.stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
                )
                await asyncio.to_thread(wait_stream_active, kinesis, env.stream)
                merged = {
                    s["ShardId"] for s in _shards(kinesis, env.stream) if s.get("AdjacentParentShardId")
                }
                assert merged
                await h.wait_for(lambda: delivered_from(merged), 120, "deliveries from every merged shard")
                producer.stop()
                ids = set(producer.ids)
                await h.wait_for(lambda: delivered(ids), 240, "every event")
            finally:
                producer.stop()
                for stop in stops:
                    stop.set()
                await asyncio.gather(*tasks)

    out = env.outputs()
    assert {o["event_id"] for o in out} == ids  # nothing lost, nothing made up
    expired = sum(c.moves.get("expiry", 0) for c in (a, b))
    if not expired:  # every move was planned (handoff, SHARD_END): no replays
        assert len(out) == len(ids)
    out = first_copies(out)  # a replay (after an expiry) comes after the first copy: order holds on those
    listed = {s["ShardId"]: s for s in _shards(kinesis, env.stream)}
    rows = {
        r["shard_id"]: r
        for r in await pool.fetch(
            "SELECT shard_id, ended, checkpoint_seq, parent_shard_ids FROM kinesis_leases WHERE stream = $1",
            env.stream,
        )
    }
    assert set(rows) == set(listed)  # every shard ever listed has its lease
    for shard_id, shard in listed.items():
        closed = "EndingSequenceNumber" in shard["SequenceNumberRange"]
        assert rows[shard_id]["ended"] == closed, shard_id  # every closed shard read to its end
        if closed:
            assert rows[shard_id]["checkpoint_seq"] == "SHARD_END"
    parents = {s: list(r["parent_shard_ids"]) for s, r in rows.items() if r["parent_shard_ids"]}
    assert {len(p) for p in parents.values()} == {1, 2}  # split children and merged children
    checked = assert_parents_first(out, parents)
    assert checked >= split | merged  # the check saw records on both sides of every split and merge
    assert_per_key_order(out)
