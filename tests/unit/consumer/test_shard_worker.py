"""The shard worker's lifecycle with fakes that record state: resume inside an aggregate, retries,
SHARD_END, lease loss without a checkpoint, expired iterators."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.kinesis import IteratorExpired, KinesisRecord, RecordsPage, ShardInfo, StartAt
from consumer.kpl import pack
from consumer.shard import ConsumerStats, ShardOutcome, ShardWorker, event_id, loads_json
from core.checkpointing import Position
from core.errors import BadRecord, LeaseLost, Throttled
from core.events import parse_event
from recsys.settings import ConsumerSettings
from recsys.testing import (
    POISON,
    FakeLeaseTable,
    FakeReader,
    FakeRecommender,
    MemoryLatestStore,
    RecordingDeadLetters,
    RecordingSink,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ev(customer: int, code: str = "S1") -> bytes:
    return json.dumps(
        {"customer_number": customer, "browse_history": [{"product_code": code, "quantity": 1}]}
    ).encode()


def rec(seq: int, data: bytes) -> KinesisRecord:
    return KinesisRecord(str(seq), "pk", data, NOW)


def worker(
    pages: list[RecordsPage | Exception],
    *,
    checkpoint: tuple[str, int] | None = None,
    table: FakeLeaseTable | None = None,
    recommender: FakeRecommender | None = None,
    latest: MemoryLatestStore | None = None,
    sink: RecordingSink | None = None,
    **cfg: Any,
) -> tuple[ShardWorker, dict[str, Any]]:
    table = table or FakeLeaseTable()
    lease = table.held("shardId-1", Position(*checkpoint) if checkpoint else None)
    parts: dict[str, Any] = {
        "reader": FakeReader(pages),
        "table": table,
        "sink": sink or RecordingSink(),
        "dead": RecordingDeadLetters(),
        "rec": recommender or FakeRecommender(),
        "latest": latest or MemoryLatestStore(),
        "children": [],
        "draining": asyncio.Event(),
    }

    async def on_children(children: list[ShardInfo]) -> None:
        parts["children"].extend(children)

    w = ShardWorker(
        lease=lease,
        table=parts["table"],
        reader=parts["reader"],
        sink=parts["sink"],
        dead_letters=parts["dead"],
        recommender=parts["rec"],
        latest=parts["latest"],
        settings=ConsumerSettings(poll_interval_s=0.2, batch_max_wait_ms=0, **cfg),
        initial=StartAt("LATEST"),
        draining=parts["draining"],
        stats=ConsumerStats(),
        on_children=on_children,
    )
    return w, parts


async def test_resumes_inside_an_aggregate_after_the_checkpointed_sub_record() -> None:
    aggregate = pack([("a", ev(1), None), ("b", ev(2), None), ("c", ev(3), None)])
    child = ShardInfo("shardId-2", ("shardId-1",), False, 0, 10)
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(5, aggregate), rec(6, ev(4))], None, 0, [child])]
    w, parts = worker(pages, checkpoint=("5", 1))
    assert await w.run() is ShardOutcome.ENDED
    assert parts["reader"].starts == [StartAt("AT_SEQUENCE_NUMBER", sequence="5")]
    ids = [o["event_id"] for o in parts["sink"].delivered]
    assert ids == ["shardId-1:5:2", "shardId-1:6"]
    assert [o["customer_number"] for o in parts["sink"].delivered] == [3, 4]
    assert parts["table"].checkpoints == [(Position("6", 0), False), (None, True)]  # then SHARD_END
    assert [c.shard_id for c in parts["children"]] == ["shardId-2"]
    rows = sorted(parts["latest"].rows.values(), key=lambda r: r.event_id)
    assert [r.event_id for r in rows] == ids
    assert all(r.event_time == NOW for r in rows)  # no event_time: the arrival time


async def test_a_failing_recommender_is_retried_and_nothing_is_skipped() -> None:
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(1, ev(1)), rec(2, b"nope")], None, 0, [])]
    w, parts = worker(pages, recommender=FakeRecommender(failures=2))
    await w.run()
    assert parts["rec"].batches == [1]
    assert [o["event_id"] for o in parts["sink"].delivered] == ["shardId-1:1"]
    assert [(x.reason, x.position) for x in parts["dead"].letters] == [("not_json", Position("2", 0))]
    assert parts["table"].checkpoints[0] == (Position("2", 0), False)


async def test_a_lost_lease_stops_the_shard_and_nothing_is_checkpointed() -> None:
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(1, ev(1))], "it", 100, [])]
    table = FakeLeaseTable()
    w, parts = worker(pages, table=table)
    table.steal("shardId-1")  # another worker took the lease: our next write finds out
    with pytest.raises(LeaseLost):
        await w.run()
    assert parts["table"].checkpoints == []
    assert table.rows["shardId-1"].owner == "worker-b"


async def test_an_expired_iterator_is_reacquired_after_the_last_handled_record() -> None:
    pages: list[RecordsPage | Exception] = [
        RecordsPage([rec(1, ev(1)), rec(2, ev(2))], "it", 0, []),
        IteratorExpired("expired"),
        RecordsPage([rec(2, ev(2)), rec(3, ev(3))], None, 0, []),  # AT_SEQUENCE_NUMBER 2 re-reads 2
    ]
    w, parts = worker(pages)
    await w.run()
    assert parts["reader"].starts == [StartAt("LATEST"), StartAt("AT_SEQUENCE_NUMBER", sequence="2")]
    assert [o["event_id"] for o in parts["sink"].delivered] == ["shardId-1:1", "shardId-1:2", "shardId-1:3"]


async def test_draining_finishes_the_batch_in_hand() -> None:
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(1, ev(1))], "it", 0, [])]
    w, parts = worker(pages)
    task = asyncio.create_task(w.run())
    await parts["table"].checkpointed.wait()
    parts["draining"].set()
    assert await task is ShardOutcome.DRAINED
    assert parts["table"].checkpoints == [(Position("1", 0), False)]


def test_event_ids() -> None:
    assert event_id("shardId-7", Position("42", 0), aggregated=False) == "shardId-7:42"
    assert event_id("shardId-7", Position("42", 0), aggregated=True) == "shardId-7:42:0"


async def test_throttled_reads_back_off_and_lose_nothing() -> None:
    pages: list[RecordsPage | Exception] = [
        Throttled("ProvisionedThroughputExceededException"),
        Throttled("ProvisionedThroughputExceededException"),
        RecordsPage([rec(1, ev(1))], None, 0, []),
    ]
    w, parts = worker(pages)
    assert await w.run() is ShardOutcome.ENDED
    assert parts["reader"].pages == []
    assert [o["event_id"] for o in parts["sink"].delivered] == ["shardId-1:1"]
    assert len(parts["reader"].starts) == 1  # the same iterator was retried


async def test_every_kind_of_poison_is_dead_lettered_with_its_reason_and_the_shard_goes_on() -> None:
    kinds = list(POISON.items())
    records = [rec(1, ev(1)), *(rec(2 + i, data) for i, (_, (data, _)) in enumerate(kinds)), rec(99, ev(2))]
    w, parts = worker([RecordsPage(records, None, 0, [])])
    assert await w.run() is ShardOutcome.ENDED
    assert [o["event_id"] for o in parts["sink"].delivered] == ["shardId-1:1", "shardId-1:99"]
    got = {letter.position.sequence: letter.reason for letter in parts["dead"].letters}
    assert got == {str(2 + i): reason for i, (_, (_, reason)) in enumerate(kinds)}
    assert parts["table"].checkpoints[0] == (Position("99", 0), False)


async def test_a_request_the_recommender_refuses_is_isolated_and_the_rest_answered() -> None:
    records = [rec(i, ev(i, "BAD" if i == 5 else "S1")) for i in range(1, 9)]
    refusing = FakeRecommender(refuse=lambda r: r.browse_history[0].product_code == "BAD")
    w, parts = worker([RecordsPage(records, None, 0, [])], recommender=refusing)
    await w.run()
    delivered = [o["event_id"] for o in parts["sink"].delivered]
    assert delivered == [f"shardId-1:{i}" for i in range(1, 9) if i != 5]
    assert [(x.reason, x.position) for x in parts["dead"].letters] == [("recommend_failed", Position("5", 0))]
    assert parts["table"].checkpoints[0] == (Position("8", 0), False)


async def test_a_row_the_latest_store_refuses_dead_letters_its_record_instead_of_delivering_it() -> None:
    records = [rec(i, ev(i)) for i in range(1, 5)]
    latest = MemoryLatestStore(refuse=lambda row: row.customer_number == 3)
    w, parts = worker([RecordsPage(records, None, 0, [])], latest=latest)
    await w.run()
    assert [o["customer_number"] for o in parts["sink"].delivered] == [1, 2, 4]
    assert sorted(latest.rows) == [1, 2, 4]
    assert [(x.reason, x.position) for x in parts["dead"].letters] == [("latest_rejected", Position("3", 0))]
    assert parts["table"].checkpoints[0] == (Position("4", 0), False)


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"customer_number": 103, "browse_history": [{"product_code": "A"}]}).encode(),
        b'{"customer_number": 103, "customer_number": 104, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 123456789012345678901234567890, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 103, "credit_limit": NaN, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 103, "credit_limit": 1e400, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 103, "city": "\\ud800", "browse_history": [{"product_code": "A"}]}',
        b'\xef\xbb\xbf{"customer_number": 103, "browse_history": [{"product_code": "A"}]}',
        json.dumps({"customer_number": 103, "browse_history": [{"product_code": "A"}]}).encode("utf-16"),
        b'{"customer_number": 103, "credit_limit": 0.1000000000000000055511151231257827, '
        b'"browse_history": [{"product_code": "A", "quantity": -0}]}',
        b'{"customer_number": 103, "big": 18446744073709551616, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 103, "small": -9223372036854775809, "browse_history": [{"product_code": "A"}]}',
        b'{"customer_number": 103, "x": "a\tb", "browse_history": [{"product_code": "A"}]}',
        b"[" * 5000 + b"]" * 5000,
        b'{"customer_number": 103, "city": "\xff", "browse_history": []}',
        b"",
        b"not json",
    ],
)
def test_the_consumers_json_decoder_accepts_and_refuses_what_json_loads_does(data: bytes) -> None:
    def outcome(loads: Any) -> Any:
        try:
            event = parse_event(data, loads)
        except BadRecord as exc:
            return ("refused", exc.reason)
        return ("accepted", event.customer_number, event.features, event.browse_history, repr(event.raw))

    assert outcome(loads_json) == outcome(json.loads)


class HeldSink(RecordingSink):
    """Holds its first delivery until ``release`` is set; later ones go through at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.calls = 0

    async def deliver(self, items: Any, on_ack: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.release.wait()
        await super().deliver(items, on_ack)


class SignallingLatest(MemoryLatestStore):
    """Sets ``stored[customer]`` once that customer's row is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[int, asyncio.Event] = {}

    def event(self, customer: int) -> asyncio.Event:
        return self.stored.setdefault(customer, asyncio.Event())

    async def upsert_many(self, rows: Any) -> None:
        await super().upsert_many(rows)
        for row in rows:
            self.event(row.customer_number).set()


async def test_a_slow_delivery_does_not_hold_up_the_next_batch_and_the_checkpoint_waits_for_it() -> None:
    pages: list[RecordsPage | Exception] = [
        RecordsPage([rec(1, ev(1))], "it", 0, []),
        RecordsPage([rec(2, ev(2))], None, 0, []),
    ]
    sink, latest = HeldSink(), SignallingLatest()
    w, parts = worker(pages, sink=sink, latest=latest)
    run = asyncio.create_task(w.run())
    await asyncio.wait_for(latest.event(2).wait(), 30)  # the second batch is visible...
    # ...while the first batch's delivery is still held (the second's may have gone through)
    assert "shardId-1:1" not in [o["event_id"] for o in sink.delivered]
    assert parts["table"].checkpoints == []  # and nothing is checkpointed past an unacked record
    sink.release.set()
    assert await asyncio.wait_for(run, 30) is ShardOutcome.ENDED  # the shard's end waits for it
    assert sorted(o["event_id"] for o in sink.delivered) == ["shardId-1:1", "shardId-1:2"]
    assert parts["table"].checkpoints == [(Position("2", 0), False), (None, True)]
