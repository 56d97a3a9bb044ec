"""The decision of GET /recommendations (stream -> model -> popular), with fakes that record state
(``recsys.testing``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.errors import ModelNotReady
from core.recommendations import Recommendation, ScoredItem, SimilarItems, Source
from infra.latest import LatestRow
from recsys.testing import FakeServingRecommender, MemoryLatestStore
from service.answers import answer_for
from service.state import ModelSlot

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def _items(prefix: str, n: int) -> tuple[ScoredItem, ...]:
    return tuple(ScoredItem(f"{prefix}{i}", 1 - i / 100) for i in range(n))


def _row(customer: int) -> LatestRow:
    rec = Recommendation(_items("R", 10), SimilarItems("S1", _items("S", 10)), "v7", Source.STREAM)
    return LatestRow(customer, rec, "shard:1", NOW, NOW)


async def test_stream_first_truncated_to_the_limit_without_touching_the_model() -> None:
    latest = MemoryLatestStore({7: _row(7)})
    answer = await answer_for(7, 3, latest, ModelSlot(None))  # no model: the stream path needs none
    assert answer.source is Source.STREAM
    assert [i.id for i in answer.recommended_items] == ["R0", "R1", "R2"]
    assert len(answer.similar_items.similar_items) == 3
    assert (answer.model_version, answer.event_id, answer.computed_at) == ("v7", "shard:1", NOW)
    assert latest.reads == [7]


async def test_model_answer_for_a_known_customer() -> None:
    rec = Recommendation(_items("M", 8), SimilarItems(None, ()), "v9", Source.MODEL)
    model = FakeServingRecommender("v9", known={8: rec}, popular=_items("P", 50))
    answer = await answer_for(8, 5, MemoryLatestStore(), ModelSlot(model), now=lambda: NOW)
    assert answer.source is Source.MODEL
    assert len(answer.recommended_items) == 5
    assert answer.computed_at == NOW
    assert model.popular_asked == []


async def test_popular_for_an_unknown_customer_or_a_fallback_answer() -> None:
    fallback = Recommendation(_items("F", 5), SimilarItems(None, ()), "v9", Source.MODEL, fallback=True)
    model = FakeServingRecommender("v9", known={9: fallback}, popular=_items("P", 50))
    unknown = await answer_for(1, 4, MemoryLatestStore(), ModelSlot(model), now=lambda: NOW)
    flagged = await answer_for(9, 4, MemoryLatestStore(), ModelSlot(model), now=lambda: NOW)
    for answer in (unknown, flagged):
        assert answer.source is Source.POPULAR
        assert [i.id for i in answer.recommended_items] == ["P0", "P1", "P2", "P3"]
        assert answer.similar_items == SimilarItems(None, ())
        assert answer.model_version == "v9"


async def test_no_stream_answer_and_no_model_is_model_not_ready() -> None:
    with pytest.raises(ModelNotReady, match="load-vectors"):
        await answer_for(1, 4, MemoryLatestStore(), ModelSlot(None, reason="run `recsys load-vectors`"))


def test_answer_json_is_the_documented_shape() -> None:
    import asyncio

    answer = asyncio.run(answer_for(7, 2, MemoryLatestStore({7: _row(7)}), ModelSlot(None)))
    body = answer.to_json()
    assert set(body) == {
        "customer_number", "source", "model_version", "computed_at", "event_id",
        "recommended_items", "similar_items",
    }  # fmt: skip
    assert body["source"] == "stream"
    assert body["computed_at"] == "2026-11-26T06:00:00+00:00"
    assert body["recommended_items"][0] == {"id": "R0", "score": 1.0}
