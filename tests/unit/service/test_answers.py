"""The decision of GET /recommendations (stream -> model -> popular), with fakes that record state
(``recsys.testing``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.errors import ModelNotReady
from core.recommendations import Recommendation, ScoredItem, SimilarItems, Source
from infra.latest import LatestRow, StoredAnswers
from recsys.testing import KNOWN_CUSTOMER, FakeServingRecommender, MemoryLatestStore
from service.answers import LatestOnly, answer_for
from service.state import ModelSlot

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def _items(prefix: str, n: int) -> tuple[ScoredItem, ...]:
    return tuple(ScoredItem(f"{prefix}{i}", 1 - i / 100) for i in range(n))


def _row(customer: int, version: str = "v7") -> LatestRow:
    rec = Recommendation(_items("R", 10), SimilarItems("S1", _items("S", 10)), version, Source.STREAM)
    return LatestRow(customer, rec, "shard:1", NOW, NOW)


def _stored(*rows: LatestRow) -> LatestOnly:
    return LatestOnly(MemoryLatestStore({row.customer_number: row for row in rows}))


class Precomputed:
    """An ``AnswerLookup`` holding one version's precomputed answers (``asked``: the versions asked)."""

    def __init__(self, version: str, answers: dict[int, tuple[ScoredItem, ...]], *rows: LatestRow) -> None:
        self.version, self.answers, self.latest = version, answers, _stored(*rows)
        self.asked: list[str | None] = []

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        self.asked.append(model_version)
        stream = (await self.latest.lookup(customer_number, model_version, limit)).stream
        found = self.answers.get(customer_number) if model_version == self.version else None
        return StoredAnswers(stream, None if found is None else found[:limit])


async def test_stream_first_truncated_to_the_limit_without_touching_the_model() -> None:
    latest = MemoryLatestStore({7: _row(7)})
    answer = await answer_for(7, 3, LatestOnly(latest), ModelSlot(None))  # no model: none needed
    body = answer.to_json()
    assert answer.source is Source.STREAM
    assert [i["id"] for i in body["recommended_items"]] == ["R0", "R1", "R2"]
    assert len(body["similar_items"]["similar_items"]) == 3
    assert body["similar_items"]["product_code"] == "S1"
    assert (answer.model_version, answer.event_id, answer.computed_at) == ("v7", "shard:1", NOW)
    assert latest.reads == [7]


async def test_a_streamed_answer_of_another_version_is_not_served() -> None:
    rec = Recommendation(_items("M", 8), SimilarItems(None, ()), "v9", Source.MODEL)
    model = FakeServingRecommender("v9", known={7: rec}, popular=_items("P", 50))
    slot = ModelSlot(model)
    first = await answer_for(7, 5, _stored(_row(7, "v7")), slot, now=lambda: NOW)
    again = await answer_for(7, 5, _stored(_row(7, "v7")), slot, now=lambda: NOW)
    for answer in (first, again):
        assert answer.source is Source.MODEL
        assert answer.model_version == "v9"
        assert [i["id"] for i in answer.to_json()["recommended_items"]] == ["M0", "M1", "M2", "M3", "M4"]
    assert model.refreshes == 1  # v7 is remembered as not current: no check per request


async def test_a_streamed_answer_of_a_newer_version_switches_the_model_first() -> None:
    model = FakeServingRecommender("v9")
    model.active = "v10"  # loaded after ours: the consumer answers with it already
    slot = ModelSlot(model)
    answer = await answer_for(7, 5, _stored(_row(7, "v10")), slot)
    assert answer.source is Source.STREAM and answer.model_version == "v10"
    assert model.model_version == "v10"
    old = await answer_for(8, 5, _stored(_row(8, "v9")), slot, now=lambda: NOW)
    assert old.source is not Source.STREAM and old.model_version == "v10"


async def test_a_known_customer_is_answered_from_the_precomputed_answer() -> None:
    model = FakeServingRecommender("v9", popular=_items("P", 50))
    stored = Precomputed("v9", {KNOWN_CUSTOMER: _items("C", 100)})
    answer = await answer_for(KNOWN_CUSTOMER, 4, stored, ModelSlot(model), now=lambda: NOW)
    assert answer.source is Source.MODEL and answer.model_version == "v9"
    assert [i["id"] for i in answer.to_json()["recommended_items"]] == ["C0", "C1", "C2", "C3"]
    assert answer.to_json()["similar_items"] == {"product_code": None, "similar_items": []}
    assert stored.asked == ["v9"]
    assert model.asked_customers == []  # nothing computed per request
    deeper = await answer_for(KNOWN_CUSTOMER, 101, stored, ModelSlot(model), now=lambda: NOW)
    plain = await answer_for(KNOWN_CUSTOMER, 4, stored, ModelSlot(model), now=lambda: NOW, precomputed=False)
    assert deeper.source is plain.source is Source.MODEL
    assert model.asked_customers == [
        KNOWN_CUSTOMER,
        KNOWN_CUSTOMER,
    ]  # past the stored depth, or stored with another filter


async def test_model_answer_for_a_known_customer() -> None:
    rec = Recommendation(_items("M", 8), SimilarItems(None, ()), "v9", Source.MODEL)
    model = FakeServingRecommender("v9", known={8: rec}, popular=_items("P", 50))
    answer = await answer_for(8, 5, _stored(), ModelSlot(model), now=lambda: NOW)
    assert answer.source is Source.MODEL
    assert len(answer.to_json()["recommended_items"]) == 5
    assert answer.computed_at == NOW
    assert model.popular_asked == []


async def test_popular_for_an_unknown_customer_or_a_fallback_answer() -> None:
    fallback = Recommendation(_items("F", 5), SimilarItems(None, ()), "v9", Source.MODEL, fallback=True)
    model = FakeServingRecommender("v9", known={9: fallback}, popular=_items("P", 50))
    unknown = await answer_for(1, 4, _stored(), ModelSlot(model), now=lambda: NOW)
    flagged = await answer_for(9, 4, _stored(), ModelSlot(model), now=lambda: NOW)
    for answer in (unknown, flagged):
        body = answer.to_json()
        assert answer.source is Source.POPULAR
        assert [i["id"] for i in body["recommended_items"]] == ["P0", "P1", "P2", "P3"]
        assert body["similar_items"] == {"product_code": None, "similar_items": []}
        assert answer.model_version == "v9"


async def test_no_stream_answer_and_no_model_is_model_not_ready() -> None:
    with pytest.raises(ModelNotReady, match="load-vectors"):
        await answer_for(1, 4, _stored(), ModelSlot(None, reason="run `recsys load-vectors`"))


def test_answer_json_is_the_documented_shape() -> None:
    import asyncio

    answer = asyncio.run(answer_for(7, 2, _stored(_row(7)), ModelSlot(None)))
    body = answer.to_json()
    assert set(body) == {
        "customer_number", "source", "model_version", "computed_at", "event_id",
        "recommended_items", "similar_items",
    }  # fmt: skip
    assert body["source"] == "stream"
    assert body["computed_at"] == "2026-11-26T06:00:00+00:00"
    assert body["recommended_items"][0] == {"id": "R0", "score": 1.0}


def test_the_precomputed_depth_is_the_one_the_loader_stores() -> None:
    from model_store.customer_answers import DEPTH
    from service.answers import PRECOMPUTED_DEPTH

    assert PRECOMPUTED_DEPTH == DEPTH
