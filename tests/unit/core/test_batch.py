"""The pure steps of a batch: triage, isolation of refused requests, output records and their size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest

from consumer.kinesis import KinesisRecord
from consumer.kpl import deaggregate, is_aggregated, pack
from core.batch import MAX_OUTPUT_BYTES, Refusal, answer_each, finish, triage
from core.checkpointing import Position
from core.errors import DatabaseUnavailable, DataRejected, ModelNotReady
from core.recommendations import Recommendation, ScoredItem, SimilarItems
from recsys.testing import POISON

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ev(customer: int, **extra: object) -> bytes:
    return json.dumps(
        {"customer_number": customer, "browse_history": [{"product_code": "S1"}], **extra}
    ).encode()


def rec(seq: int, data: bytes, key: str = "pk") -> KinesisRecord:
    return KinesisRecord(str(seq), key, data, NOW)


def plan(records: Sequence[KinesisRecord], after: Position | None = None, suppressed: set[int] | None = None):  # type: ignore[no-untyped-def]
    return triage(
        records,
        shard_id="shard-1",
        after=after,
        split=deaggregate,
        is_aggregated=is_aggregated,
        suppressed=None if suppressed is None else suppressed.__contains__,
    )


def answer(customer: int) -> Recommendation:
    return Recommendation((ScoredItem(f"P{customer}", 0.5),), SimilarItems("S1", ()), "v1")


def test_triage_sorts_a_page_into_events_dead_letters_and_suppressed_positions() -> None:
    aggregate = pack([("a", ev(10), None), ("b", b"{broken", None), ("c", ev(11), None)])
    got = plan([rec(1, ev(1)), rec(2, b"nope"), rec(3, aggregate), rec(4, ev(4))], suppressed={4})
    assert got.positions == [
        Position("1"),
        Position("2"),
        Position("3", 0),
        Position("3", 1),
        Position("3", 2),
        Position("4"),
    ]
    assert [a.event.customer_number for a in got.accepted] == [1, 10, 11]
    assert [(d.position, d.reason) for d in got.dead] == [
        (Position("2"), "not_json"),
        (Position("3", 1), "not_json"),
    ]
    assert got.suppressed == [Position("4")]
    assert got.records_in == 6


def test_triage_skips_what_the_checkpoint_covers_even_inside_an_aggregate() -> None:
    aggregate = pack([("a", ev(10), None), ("b", ev(11), None), ("c", ev(12), None)])
    got = plan([rec(3, aggregate), rec(4, ev(4))], after=Position("3", 1))
    assert got.positions == [Position("3", 2), Position("4")]
    assert [a.event.customer_number for a in got.accepted] == [12, 4]
    assert all(a.record.aggregated == (a.record.position.sequence == "3") for a in got.accepted)


def test_an_aggregate_that_does_not_split_is_one_dead_letter_at_sub_zero() -> None:
    broken = bytearray(pack([("a", ev(1), None)]))
    broken[-1] ^= 0xFF
    got = plan([rec(7, bytes(broken))])
    assert [(d.position, d.reason, d.data) for d in got.dead] == [
        (Position("7", 0), "bad_aggregate", bytes(broken))
    ]
    assert got.records_in == 1


def test_an_unforeseen_failure_of_the_splitter_dead_letters_that_record_only() -> None:
    def split(data: bytes, key: str):  # type: ignore[no-untyped-def]
        if data == b"boom":
            raise IndexError("a bug meets a record")
        return deaggregate(data, key)

    got = triage(
        [rec(1, b"boom"), rec(2, ev(2))], shard_id="s", after=None, split=split, is_aggregated=is_aggregated
    )
    assert [(d.reason, d.detail) for d in got.dead] == [("bad_aggregate", "IndexError: a bug meets a record")]
    assert [a.event.customer_number for a in got.accepted] == [2]


@pytest.mark.parametrize(("name", "data", "reason"), [(n, d, r) for n, (d, r) in POISON.items()])
def test_every_known_poison_is_a_dead_letter_with_its_reason(name: str, data: bytes, reason: str) -> None:
    got = plan([rec(1, data)])
    if got.dead:
        assert [d.reason for d in got.dead] == [reason], name
        return
    done = finish(got.accepted, [answer(1)] * len(got.accepted), shard_id="s", now=NOW, encode=orjson.dumps)
    assert [d.reason for d in done.dead] == [reason], name
    assert done.deliveries == []


async def test_answer_each_isolates_the_refused_requests_by_bisection() -> None:
    calls: list[list[int]] = []

    async def call(batch: Sequence[int]) -> list[str]:
        calls.append(list(batch))
        if 3 in batch or 6 in batch:
            raise DataRejected("refused")
        return [f"a{n}" for n in batch]

    got = await answer_each(list(range(8)), call, reason="recommend_failed")
    assert got[:3] == ["a0", "a1", "a2"] and got[4:6] == ["a4", "a5"] and got[7] == "a7"
    assert got[3] == Refusal("recommend_failed", "refused") and got[6] == Refusal(
        "recommend_failed", "refused"
    )
    assert calls[0] == list(range(8))  # one call when nothing is wrong; halves only after a refusal


async def test_answer_each_treats_a_bug_and_a_wrong_count_as_refusals_of_one_request() -> None:
    async def call(batch: Sequence[int]) -> list[int]:
        if 2 in batch:
            raise KeyError("oops")
        return [] if 0 in batch else list(batch)

    got = await answer_each([0, 1, 2], call, reason="r")
    assert got[0] == Refusal("r", "0 answers for 1 requests")
    assert got[1] == 1
    assert got[2] == Refusal("r", "KeyError: 'oops'")


@pytest.mark.parametrize("error", [DatabaseUnavailable("down"), ModelNotReady("none")])
async def test_answer_each_lets_infrastructure_failures_through(error: Exception) -> None:
    async def call(batch: Sequence[int]) -> list[int]:
        raise error

    with pytest.raises(type(error)):
        await answer_each([1, 2, 3], call, reason="r")


def test_finish_builds_the_contract_record_and_the_latest_row() -> None:
    got = plan([rec(5, ev(42, session_id="s1", event_time="2026-02-03T04:05:06Z"))])
    done = finish(got.accepted, [answer(42)], shard_id="shard-1", now=NOW, encode=orjson.dumps)
    (delivery,) = done.deliveries
    record = json.loads(delivery.payload)
    assert delivery.payload.endswith(b"\n")
    assert record["customer_number"] == 42 and record["session_id"] == "s1"  # the input unchanged
    assert record["recommended_items"] == [{"id": "P42", "score": 0.5}]
    assert (record["event_id"], record["model_version"]) == ("shard-1:5", "v1")
    assert record["processed_at"] == NOW.isoformat()
    assert delivery.row.event_time == datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_finish_holds_records_to_firehoses_size_and_dead_letters_the_rest() -> None:
    long = "x" * 190
    fits = plan([rec(1, ev(1, pad=[long] * 5000))])  # about 0.97 MB with the answer
    too_big = plan([rec(2, ev(2, pad=[long] * 5500))])
    accepted = [*fits.accepted, *too_big.accepted]
    done = finish(accepted, [answer(1), answer(2)], shard_id="s", now=NOW, encode=orjson.dumps)
    assert [len(d.payload) <= MAX_OUTPUT_BYTES for d in done.deliveries] == [True]
    assert [(d.position, d.reason) for d in done.dead] == [(Position("2"), "result_too_large")]


def test_finish_turns_refusals_and_encoder_failures_into_dead_letters() -> None:
    got = plan([rec(1, ev(1)), rec(2, ev(2)), rec(3, ev(3))])

    def encode(obj: object) -> bytes:
        if isinstance(obj, dict) and obj["customer_number"] == 3:
            raise TypeError("cannot encode")
        return orjson.dumps(obj)

    answers = [answer(1), Refusal("recommend_failed", "DataRejected: no"), answer(3)]
    done = finish(got.accepted, answers, shard_id="s", now=NOW, encode=encode)
    assert [d.record.position for d in done.deliveries] == [Position("1")]
    assert [(d.position, d.reason) for d in done.dead] == [
        (Position("2"), "recommend_failed"),
        (Position("3"), "unencodable"),
    ]
