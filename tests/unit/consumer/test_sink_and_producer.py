"""Firehose limits and partial-failure retries; the producer's PutRecords retries and KPL grouping.

Fakes record what they were sent; no network.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from botocore.exceptions import ClientError

from consumer.kinesis import parse_initial_position
from consumer.kpl import deaggregate
from consumer.producer import ProduceSummary, produce, put_records
from consumer.sink import MAX_BATCH_BYTES, MAX_RECORD_BYTES, FirehoseSink, batches, pack
from core.errors import ConfigError


def test_batches_hold_at_most_500_records_and_4_mib() -> None:
    items = [(i, b"x" * 10) for i in range(1234)]
    groups = batches(items)
    assert [len(g) for g in groups] == [500, 500, 234]
    assert [k for g in groups for k, _ in g] == list(range(1234))
    big = [(i, b"y" * 900_000) for i in range(10)]
    groups = batches(big)
    assert all(sum(len(p) for _, p in g) <= MAX_BATCH_BYTES for g in groups)
    assert [len(g) for g in groups] == [4, 4, 2]
    with pytest.raises(ValueError, match="exceeds"):
        batches([(0, b"z" * (MAX_RECORD_BYTES + 1))])


class FakeFirehose:
    """Rejects the records whose payload is in ``reject_once`` the first time it sees them."""

    def __init__(self, reject_once: set[bytes], throttle_calls: int = 0) -> None:
        self.reject_once = set(reject_once)
        self.throttle_calls = throttle_calls
        self.calls: list[list[bytes]] = []
        self.stored: list[bytes] = []

    async def put_record_batch(
        self, DeliveryStreamName: str, Records: list[dict[str, bytes]]
    ) -> dict[str, Any]:
        data = [r["Data"] for r in Records]
        self.calls.append(data)
        if self.throttle_calls:
            self.throttle_calls -= 1
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "PutRecordBatch"
            )
        out = []
        for d in data:
            if d in self.reject_once:
                self.reject_once.discard(d)
                out.append({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "busy"})
            else:
                self.stored.append(d)
                out.append({"RecordId": "x"})
        return {"FailedPutCount": sum(1 for o in out if "ErrorCode" in o), "RequestResponses": out}


async def test_only_rejected_records_are_resent_and_each_is_acked_once() -> None:
    payloads = [f"{i}\n".encode() for i in range(700)]
    client = FakeFirehose(reject_once={payloads[3], payloads[650]})
    sink = FirehoseSink(client, "d", backoff_base_s=0.0, rng=random.Random(1), pack_bytes=0)
    acked: list[int] = []
    await sink.deliver(list(enumerate(payloads)), acked.append)
    assert [len(c) for c in client.calls] == [500, 200, 2]
    assert client.calls[2] == [payloads[3], payloads[650]]
    assert sorted(acked) == list(range(700)) and len(acked) == 700
    assert sorted(client.stored) == sorted(payloads)


def test_packing_keeps_every_line_in_order_within_the_record_limit() -> None:
    payloads = [(i, f'{{"n": {i}, "pad": "{"x" * (i % 50)}"}}\n'.encode()) for i in range(1000)]
    packed = pack(payloads, 4096)
    assert 1 < len(packed) < 1000
    assert all(len(p.data) <= 4096 for p in packed)
    assert b"".join(p.data for p in packed) == b"".join(d for _, d in payloads)  # same bytes, same order
    assert [k for p in packed for k in p.keys] == list(range(1000))
    for p in packed:  # a record's lines are exactly the events it names
        assert [json.loads(line)["n"] for line in p.data.splitlines()] == list(p.keys)
    # the default is Firehose's own limit; 0 (or a limit below one record) is one event per record
    assert len(pack(payloads)) == 1
    assert [p.keys for p in pack(payloads[:3], 0)] == [(0,), (1,), (2,)]
    assert [p.keys for p in pack([(0, b"y" * 5000), (1, b"z\n")], 4096)] == [(0,), (1,)]
    big = [(i, b"b" * 600_000) for i in range(3)]
    assert [p.keys for p in pack(big)] == [(0,), (1,), (2,)]  # never beyond MAX_RECORD_BYTES
    with pytest.raises(ValueError, match="exceeds"):
        pack([(0, b"z" * (MAX_RECORD_BYTES + 1))])


async def test_a_rejected_packed_record_resends_exactly_its_events_and_acks_each_once() -> None:
    payloads = [f"{i:04d}\n".encode() for i in range(1000)]  # 5 bytes each: 20 per 100-byte record
    probe = pack(list(enumerate(payloads)), 100)
    rejected = {probe[3].data, probe[40].data}
    client = FakeFirehose(reject_once=rejected)
    sink = FirehoseSink(client, "d", backoff_base_s=0.0, rng=random.Random(1), pack_bytes=100)
    acked: list[int] = []
    await sink.deliver(list(enumerate(payloads)), acked.append)
    assert [len(c) for c in client.calls] == [50, 2]  # 1000 events in 50 records, one call
    assert client.calls[1] == [probe[3].data, probe[40].data]  # the same records, the same events
    assert sorted(acked) == list(range(1000)) and len(acked) == 1000  # every event acked once
    assert b"".join(sorted(client.stored)) == b"".join(payloads)
    assert sink.calls == 2 and sink.records == 52


async def test_a_throttled_call_is_retried_whole() -> None:
    client = FakeFirehose(set(), throttle_calls=2)
    sink = FirehoseSink(client, "d", backoff_base_s=0.0)
    acked: list[int] = []
    await sink.deliver([(0, b"a\n"), (1, b"b\n")], acked.append)
    assert len(client.calls) == 3 and acked == [0, 1]


class FakeKinesis:
    def __init__(self, reject_first: int = 0) -> None:
        self.reject_first = reject_first
        self.calls: list[list[dict[str, Any]]] = []
        self.seq = 0

    def list_shards(self, **kwargs: Any) -> dict[str, Any]:
        half = 2**127
        return {
            "Shards": [
                {
                    "ShardId": "shardId-0",
                    "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(half - 1)},
                },
                {
                    "ShardId": "shardId-1",
                    "HashKeyRange": {"StartingHashKey": str(half), "EndingHashKey": str(2**128 - 1)},
                },
            ]
        }

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Records)
        out = []
        for rec in Records:
            if self.reject_first:
                self.reject_first -= 1
                out.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "x"})
            else:
                self.seq += 1
                shard = "shardId-1" if int(rec.get("ExplicitHashKey", "0")) >= 2**127 else "shardId-0"
                out.append({"ShardId": shard, "SequenceNumber": str(self.seq)})
        return {"FailedRecordCount": sum(1 for o in out if "ErrorCode" in o), "Records": out}


def test_put_records_resends_only_the_rejected_and_keeps_positions() -> None:
    client = FakeKinesis(reject_first=3)
    entries = [{"PartitionKey": str(i), "Data": f"{i}".encode()} for i in range(1200)]
    summary = ProduceSummary()
    placed = put_records(client, "s", entries, summary, random.Random(0))
    assert [len(c) for c in client.calls] == [500, 500, 200, 3]
    assert client.calls[3] == entries[:3]
    assert summary.failed_retried == 3 and len(placed) == 1200
    assert len({seq for _, seq in placed}) == 1200


class Customer:
    def __init__(self, n: int) -> None:
        self.customer_number, self.city, self.country, self.credit_limit = n, "Paris", "France", 10.0


def test_aggregated_production_groups_events_by_shard_and_names_every_event() -> None:
    client = FakeKinesis()
    customers = [Customer(100 + i) for i in range(30)]
    summary = produce("s", customers, ["A", "B", "C"], count=300, aggregate=True, seed=3, client=client)
    assert summary.sent == 300 and len(summary.event_ids) == 300 and len(set(summary.event_ids)) == 300
    records = [r for call in client.calls for r in call]
    assert len(records) < 300
    total = 0
    for rec in records:
        users = deaggregate(rec["Data"])
        total += len(users)
        # every user record of an aggregate hashes into the shard the aggregate is put on
        shard_high = int(rec["ExplicitHashKey"]) >= 2**127
        for u in users:
            h = int.from_bytes(hashlib.md5(u.partition_key.encode()).digest(), "big")
            assert (h >= 2**127) == shard_high
    assert total == 300


def _events(calls: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in json.loads(r["Data"]).items() if k != "event_time"} for call in calls for r in call
    ]


def test_production_is_reproducible_from_its_seed_and_checks_its_arguments() -> None:
    a, b = FakeKinesis(), FakeKinesis()
    customers = [Customer(1), Customer(2)]
    produce("s", customers, ["A", "B"], count=20, seed=7, client=a)
    produce("s", customers, ["A", "B"], count=20, seed=7, client=b)
    assert _events(a.calls) == _events(b.calls)
    with pytest.raises(ConfigError):
        produce("s", customers, ["A"], count=None, duration_s=None, client=a)
    with pytest.raises(ConfigError):
        produce("s", [], ["A"], count=1, client=a)


def test_initial_positions() -> None:
    assert parse_initial_position("trim_horizon").kind == "TRIM_HORIZON"
    assert parse_initial_position("LATEST").kind == "LATEST"
    at = parse_initial_position("AT_TIMESTAMP:2026-01-02T03:04:05Z")
    assert at.kind == "AT_TIMESTAMP" and at.timestamp is not None and at.timestamp.year == 2026
    assert parse_initial_position("2026-01-02T03:04:05+00:00").kind == "AT_TIMESTAMP"
    with pytest.raises(ConfigError):
        parse_initial_position("YESTERDAY")
