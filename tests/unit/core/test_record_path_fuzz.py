"""A fuzzer on the record path: hostile bytes through split -> decode -> validate -> recommend ->
output encoding -> dead-letter encoding, the way the shard worker runs them (``core.batch``).

The property: every user record read ends as exactly one of a delivered output record (valid JSON,
newline-terminated, within Firehose's size), a dead letter (storable: its line encodes), or a
suppressed position; nothing raises out of the record path. Derandomized with a bounded number of
examples, so CI is reproducible; the database-backed twin is in tests/integration/consumer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.kinesis import KinesisRecord
from consumer.kpl import deaggregate, is_aggregated
from consumer.shard import loads_json
from core.batch import MAX_OUTPUT_BYTES, answer_each, finish, triage
from core.recommendations import RecommendRequest
from recsys.testing import FakeRecommender

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _refuses(request: RecommendRequest) -> bool:
    """A stand-in for PostgreSQL: a batch holding text it cannot store is refused whole."""
    texts = [b.product_code for b in request.browse_history]
    texts += [t for t in (request.features.city, request.features.country) if t is not None]
    return not all(_storable(t) for t in texts)


async def _record_path(datas: Sequence[bytes]) -> None:
    records = [KinesisRecord(str(100 + i), f"pk{i}", data, NOW) for i, data in enumerate(datas)]
    plan = triage(
        records,
        shard_id="shardId-0",
        after=None,
        split=deaggregate,
        is_aggregated=is_aggregated,
        suppressed=lambda customer: customer % 11 == 0,
    )
    recommender = FakeRecommender(items=3, refuse=_refuses)
    requests = [
        RecommendRequest(a.event.customer_number, a.event.features, a.event.browse_history, 3)
        for a in plan.accepted
    ]
    answers = await answer_each(requests, recommender.recommend_batch, reason="recommend_failed")
    done = finish(plan.accepted, answers, shard_id="shardId-0", now=NOW, encode=orjson.dumps)

    outcomes = [d.record.position for d in done.deliveries]
    outcomes += [letter.position for letter in (*plan.dead, *done.dead)]
    outcomes += plan.suppressed
    assert sorted(outcomes, key=lambda p: p.key) == plan.positions  # each record exactly once
    for delivery in done.deliveries:
        assert delivery.payload.endswith(b"\n") and len(delivery.payload) <= MAX_OUTPUT_BYTES
        record = json.loads(delivery.payload)
        assert record["event_id"].startswith("shardId-0:")
        assert isinstance(record["customer_number"], int)
        assert delivery.row.customer_number == record["customer_number"]
    for letter in (*plan.dead, *done.dead):
        line = orjson.dumps(letter.to_json(NOW))  # the store's encoding never fails on content
        assert orjson.loads(line)["reason"] == letter.reason


@FUZZ
@given(data=st.data())
def test_every_record_is_delivered_or_dead_lettered_never_raised(
    data: st.DataObject, hostile_record: st.SearchStrategy[bytes]
) -> None:
    asyncio.run(_record_path(data.draw(st.lists(hostile_record, min_size=1, max_size=5))))


@FUZZ
@given(data=st.data())
def test_the_consumers_json_decoder_gives_what_json_loads_gives(
    data: st.DataObject, hostile_record: st.SearchStrategy[bytes]
) -> None:
    record = data.draw(hostile_record)

    def outcome(loads: Any) -> Any:
        try:
            return ("value", repr(loads(record)))
        except (ValueError, RecursionError) as exc:
            return ("refused", type(exc).__name__)

    assert outcome(loads_json) == outcome(json.loads)
