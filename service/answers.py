"""How ``GET /recommendations/{customer_number}`` decides: stream, then model, then popular."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.ports import LatestStore
from core.recommendations import Recommendation, ScoredItem, SimilarItems, Source
from service.state import ModelSlot

__all__ = ["Answer", "answer_for"]


@dataclass(frozen=True, slots=True)
class Answer:
    customer_number: int
    source: Source
    model_version: str
    computed_at: datetime
    recommended_items: tuple[ScoredItem, ...]
    similar_items: SimilarItems
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_number": self.customer_number,
            "source": self.source.value,
            "model_version": self.model_version,
            "computed_at": self.computed_at.astimezone(UTC).isoformat(),
            "event_id": self.event_id,
            "recommended_items": [item.to_json() for item in self.recommended_items],
            "similar_items": self.similar_items.to_json(),
        }


def _limited(rec: Recommendation, limit: int) -> tuple[tuple[ScoredItem, ...], SimilarItems]:
    similar = rec.similar_items
    return rec.recommended_items[:limit], SimilarItems(similar.product_code, similar.similar_items[:limit])


async def answer_for(
    customer_number: int,
    limit: int,
    latest: LatestStore,
    model: ModelSlot,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Answer:
    """The stored streamed answer (one round trip), else the model's, else popular items.

    The stream path needs no model: it answers even while the model is not loaded.
    """
    row = await latest.get(customer_number)
    if row is not None:
        items, similar = _limited(row.recommendation, limit)
        return Answer(
            customer_number,
            Source.STREAM,
            row.recommendation.model_version,
            row.computed_at,
            items,
            similar,
            row.event_id,
        )
    recommender = model.get()
    rec = await recommender.recommend_customer(customer_number, limit)
    if rec is not None and not rec.fallback:
        items, similar = _limited(rec, limit)
        return Answer(customer_number, Source.MODEL, rec.model_version, now(), items, similar)
    version = recommender.model_version
    popular = await recommender.popular_items(limit)
    return Answer(
        customer_number, Source.POPULAR, version, now(), tuple(popular[:limit]), SimilarItems(None, ())
    )
