"""Record handling on the moto server: poison records, KPL aggregates, Firehose partial failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg

from consumer.kpl import MAGIC, pack
from consumer.producer import produce
from consumer.sink import FirehoseSink


async def _run_until(h: Any, env: Any, pool: Any, condition: Any, **kwargs: Any) -> Any:
    stop = asyncio.Event()
    async with h.consumer(env, pool, **kwargs) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        try:
            await h.wait_for(condition, 60, "the expected output")
        finally:
            stop.set()
            await task
    return consumer


async def test_poison_records_of_every_kind_are_dead_lettered_and_good_ones_delivered(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=1)
    good = [json.dumps(h.event(200 + i, i)).encode() for i in range(5)]
    bad_md5 = bytearray(pack([("k", good[0], None)]))
    bad_md5[-1] ^= 0xFF
    body = b"\x1a\x03\x08\x07\x1a"  # truncated protobuf
    poison = {
        "not_json": b"\xff\xfe not json",
        "not_an_object": b"[1, 2, 3]",
        "missing_customer_number": json.dumps({"browse_history": [{"product_code": "S10_1678"}]}).encode(),
        "bad_customer_number": json.dumps({**h.event(1), "customer_number": "abc"}).encode(),
        "bad_browse_history": json.dumps({**h.event(1), "browse_history": []}).encode(),
        "bad_event_time": json.dumps({**h.event(1), "event_time": "yesterday"}).encode(),
        "bad_field_type": json.dumps({**h.event(1), "city": 12}).encode(),
        "bad_aggregate": bytes(bad_md5),
    }
    malformed = MAGIC + body + hashlib.md5(body).digest()
    # an aggregate with one bad user record between two good ones
    mixed = pack([("a", good[3], None), ("b", b"{broken", None), ("c", good[4], None)])
    payloads = [good[0], *poison.values(), good[1], malformed, good[2], mixed]
    ids = env.put(payloads)
    shard, mixed_seq = ids[-1].split(":")
    expected_good = {ids[0], ids[len(poison) + 1], ids[len(poison) + 3], f"{ids[-1]}:0", f"{ids[-1]}:2"}

    def done() -> bool:
        return {o["event_id"] for o in env.outputs()} >= expected_good and len(env.dead_letters()) >= 10

    consumer = await _run_until(h, env, pool, done)
    assert {o["event_id"] for o in env.outputs()} == expected_good
    letters = env.dead_letters()
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], []).append(letter)
        assert letter["shard_id"] == shard
    for reason, payload in poison.items():
        assert any(letter["data"] == payload for letter in by_reason[reason]), reason
    assert any(letter["data"] == malformed for letter in by_reason["bad_aggregate"])
    inner = [x for x in by_reason["not_json"] if x["sequence_number"] == mixed_seq]
    assert [(x["sub_sequence"], x["data"]) for x in inner] == [(1, b"{broken")]
    assert len(letters) == 10
    assert consumer.stats.dead_lettered == 10
    # the shard was checkpointed past every record, good or bad
    row = await pool.fetchrow(
        "SELECT checkpoint_seq, checkpoint_sub FROM kinesis_leases WHERE stream = $1", env.stream
    )
    assert (row["checkpoint_seq"], row["checkpoint_sub"]) == (mixed_seq, 2)


async def test_kpl_aggregated_events_from_the_producer_get_sub_sequence_ids(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=2)
    customers = [_Customer(100 + i) for i in range(20)]
    summary = produce(env.stream, customers, ["S10_1678", "S12_1099", "S18_2238"], count=400, aggregate=True)
    assert summary.sent == 400 and summary.kinesis_records < 400
    assert len(set(summary.event_ids)) == 400
    assert all(eid.count(":") == 2 for eid in summary.event_ids)

    await _run_until(h, env, pool, lambda: {o["event_id"] for o in env.outputs()} >= set(summary.event_ids))
    out = env.outputs()
    assert {o["event_id"] for o in out} == set(summary.event_ids)
    # per-customer order survives aggregation: each customer's events come from one shard, in order
    shards_of: dict[int, set[str]] = {}
    for o in out:
        shards_of.setdefault(o["customer_number"], set()).add(o["event_id"].split(":")[0])
    assert all(len(s) == 1 for s in shards_of.values())


class _Customer:
    def __init__(self, n: int) -> None:
        self.customer_number = n
        self.city = "Lyon"
        self.country = "France"
        self.credit_limit = 1000.0 + n


class FlakySink(FirehoseSink):
    """Rejects every other Firehose record of its first call, then holds the resend until released."""

    attempts: ClassVar[list[list[bytes]]] = []
    release: ClassVar[asyncio.Event] = asyncio.Event()
    resending: ClassVar[asyncio.Event] = asyncio.Event()

    async def put_batch(self, payloads: Sequence[bytes]) -> list[str | None]:
        type(self).attempts.append(list(payloads))
        if len(type(self).attempts) == 1:
            codes: list[str | None] = []
            accepted = []
            for i, p in enumerate(payloads):
                if i % 2:
                    codes.append("ServiceUnavailableException")
                else:
                    codes.append(None)
                    accepted.append(p)
            await super().put_batch(accepted)
            return codes
        type(self).resending.set()
        await type(self).release.wait()
        return await super().put_batch(payloads)


def _event_ids(records: Sequence[bytes]) -> list[str]:
    """The events a list of Firehose records carries: one JSON line each."""
    return [json.loads(line)["event_id"] for record in records for line in record.splitlines()]


async def test_only_rejected_records_are_resent_with_exactly_their_events_and_the_checkpoint_waits(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    """Output records are packed several to a Firehose record (one line per event); a rejected
    Firehose record is resent with exactly the events it carried, and the checkpoint waits for it."""
    FlakySink.attempts = []
    FlakySink.release = asyncio.Event()
    FlakySink.resending = asyncio.Event()
    env = make_env(shards=1, firehose_pack_bytes=1500)  # a few events per Firehose record
    ids = env.put([json.dumps(h.event(300 + i, i)).encode() for i in range(20)])
    stop = asyncio.Event()
    async with h.consumer(env, pool, make_sink=FlakySink) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        try:
            await h.wait_for(FlakySink.resending.is_set, 60, "the resend of rejected records")
            first, resend = FlakySink.attempts
            assert 2 < len(first) < 20  # packed: fewer Firehose records than events
            assert all(record.endswith(b"\n") and len(record) <= 1500 for record in first)
            assert _event_ids(first) == ids  # every event once, in order, one line each
            assert resend == first[1::2]  # only the rejected records, each with the same events
            row = await pool.fetchrow(
                "SELECT checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream
            )
            assert row["checkpoint_seq"] is None  # part of the batch is unacknowledged: no checkpoint
            assert sorted(o["event_id"] for o in env.outputs()) == sorted(_event_ids(first[0::2]))
            FlakySink.release.set()
            await h.wait_for(
                lambda: sorted(o["event_id"] for o in env.outputs()) == sorted(ids),
                60,
                "the resent records",
            )
            await h.wait_for(
                lambda: _checkpoint(pool, env.stream, ids[-1].split(":")[1]),
                30,
                "the checkpoint past the batch",
            )
        finally:
            FlakySink.release.set()
            stop.set()
            await task
    assert len(FlakySink.attempts) == 2
    assert consumer.stats.delivered == 20  # each event acknowledged once


async def _checkpoint(pool: asyncpg.Pool[Any], stream: str, seq: str) -> bool:
    value = await pool.fetchval("SELECT checkpoint_seq FROM kinesis_leases WHERE stream = $1", stream)
    return bool(value == seq)
