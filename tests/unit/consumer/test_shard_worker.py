"""The shard worker's lifecycle with fakes that record state: resume inside an aggregate, retries,
SHARD_END, lease loss without a checkpoint, expired iterators."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.deadletters import DeadLetter
from consumer.kinesis import IteratorExpired, KinesisRecord, RecordsPage, ShardInfo, StartAt
from consumer.kpl import pack
from consumer.leases import HeldLease
from consumer.shard import ConsumerStats, ShardOutcome, ShardWorker, event_id
from consumer.sink import FirehoseSink
from core.checkpointing import Position
from core.errors import DatabaseUnavailable, LeaseLost, Throttled
from core.recommendations import Recommendation, RecommendRequest, ScoredItem, SimilarItems
from recsys.settings import ConsumerSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ev(customer: int) -> bytes:
    return json.dumps(
        {"customer_number": customer, "browse_history": [{"product_code": "S1", "quantity": 1}]}
    ).encode()


def rec(seq: int, data: bytes) -> KinesisRecord:
    return KinesisRecord(str(seq), "pk", data, NOW)


class FakeReader:
    def __init__(self, pages: list[RecordsPage | Exception]) -> None:
        self.pages = pages
        self.starts: list[StartAt] = []

    async def iterator(self, shard_id: str, start: StartAt) -> str:
        self.starts.append(start)
        return f"it-{len(self.starts)}"

    async def get_records(self, iterator: str, limit: int) -> RecordsPage:
        if not self.pages:
            return RecordsPage([], iterator, 0, [])
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page


class FakeTable:
    def __init__(self, lose_on_checkpoint: bool = False) -> None:
        self.checkpoints: list[tuple[Position | None, bool]] = []
        self.lose = lose_on_checkpoint
        self.checkpointed = asyncio.Event()

    async def checkpoint(
        self, lease: HeldLease, position: Position | None, *, shard_end: bool = False
    ) -> None:
        if self.lose:
            raise LeaseLost("taken")
        self.checkpoints.append((position, shard_end))
        self.checkpointed.set()


class RecordingSink(FirehoseSink):
    def __init__(self) -> None:
        super().__init__(None, "d", backoff_base_s=0.0)
        self.delivered: list[dict[str, Any]] = []

    async def put_batch(self, payloads: Sequence[bytes]) -> list[str | None]:
        assert all(p.endswith(b"\n") for p in payloads)
        self.delivered.extend(json.loads(p) for p in payloads)
        return [None] * len(payloads)


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def put(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


class FlakyRecommender:
    model_version = "v1"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[int] = []

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("vector store down")
        self.calls.append(len(requests))
        return [
            Recommendation((ScoredItem("X", 1.0),), SimilarItems("S1", ()), self.model_version)
            for _ in requests
        ]


class FakeLatest:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def upsert_many(self, rows: Sequence[Any]) -> None:
        self.rows.extend(rows)

    async def get(self, customer_number: int) -> Any:
        return None


def worker(
    pages: list[RecordsPage | Exception],
    *,
    checkpoint: tuple[str, int] | None = None,
    table: FakeTable | None = None,
    recommender: FlakyRecommender | None = None,
    **cfg: Any,
) -> tuple[ShardWorker, dict[str, Any]]:
    lease = HeldLease(
        "shardId-1", 1, checkpoint[0] if checkpoint else None, checkpoint[1] if checkpoint else 0
    )
    parts: dict[str, Any] = {
        "reader": FakeReader(pages),
        "table": table or FakeTable(),
        "sink": RecordingSink(),
        "dead": FakeDeadLetters(),
        "rec": recommender or FlakyRecommender(),
        "latest": FakeLatest(),
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
    assert [r.event_id for r in parts["latest"].rows] == ids
    assert all(r.event_time == NOW for r in parts["latest"].rows)  # no event_time: the arrival time


async def test_a_failing_recommender_is_retried_and_nothing_is_skipped() -> None:
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(1, ev(1)), rec(2, b"nope")], None, 0, [])]
    w, parts = worker(pages, recommender=FlakyRecommender(failures=2))
    await w.run()
    assert parts["rec"].calls == [1]
    assert [o["event_id"] for o in parts["sink"].delivered] == ["shardId-1:1"]
    assert [(x.reason, x.position) for x in parts["dead"].letters] == [("not_json", Position("2", 0))]
    assert parts["table"].checkpoints[0] == (Position("2", 0), False)


async def test_a_lost_lease_stops_the_shard_and_nothing_is_checkpointed() -> None:
    pages: list[RecordsPage | Exception] = [RecordsPage([rec(1, ev(1))], "it", 100, [])]
    w, parts = worker(pages, table=FakeTable(lose_on_checkpoint=True))
    with pytest.raises(LeaseLost):
        await w.run()
    assert parts["table"].checkpoints == []


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
