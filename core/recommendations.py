"""Recommendation values and the pure ranking rules shared by the consumer and the API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.events import BrowseItem, UserFeatures

__all__ = [
    "LatestRow",
    "RecommendRequest",
    "Recommendation",
    "ScoredItem",
    "SimilarItems",
    "Source",
    "browse_order",
    "exclude",
    "merge_similar",
]


class Source(StrEnum):
    """Where an answer came from."""

    STREAM = "stream"  # stored by the consumer for this customer
    MODEL = "model"  # computed from the customer's features and the current model
    POPULAR = "popular"  # fallback: the most popular items


@dataclass(frozen=True, slots=True)
class ScoredItem:
    id: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6)}


@dataclass(frozen=True, slots=True)
class SimilarItems:
    """Items similar to ``product_code`` (the lab's shape)."""

    product_code: str | None
    similar_items: tuple[ScoredItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "product_code": self.product_code,
            "similar_items": [{"id": i.id, "score": round(i.score, 6)} for i in self.similar_items],
        }


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """One question for the recommender: who, what they browsed, how many answers."""

    customer_number: int | None
    features: UserFeatures
    browse_history: tuple[BrowseItem, ...] = ()
    k: int = 10


@dataclass(frozen=True, slots=True)
class Recommendation:
    recommended_items: tuple[ScoredItem, ...]
    similar_items: SimilarItems
    model_version: str
    source: Source = Source.MODEL
    fallback: bool = False  # True when recommended_items are popular items, not personal ones
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            # ScoredItem.to_json inlined: this runs for every output record
            "recommended_items": [{"id": i.id, "score": round(i.score, 6)} for i in self.recommended_items],
            "similar_items": self.similar_items.to_json(),
            "model_version": self.model_version,
        }


@dataclass(frozen=True, slots=True)
class LatestRow:
    """A customer's latest streamed answer (``core.ports.LatestStore``): written by the consumer,
    read by the API. Newer means a greater (``event_time``, ``event_id``)."""

    customer_number: int
    recommendation: Recommendation
    event_id: str
    event_time: datetime
    computed_at: datetime


def browse_order(history: Sequence[BrowseItem]) -> list[str]:
    """Distinct browsed product codes, cart items first, then in browsing order."""
    seen: set[str] = set()
    ordered: list[str] = []
    for item in sorted(history, key=lambda it: not it.in_shopping_cart):  # stable sort
        if item.product_code not in seen:
            seen.add(item.product_code)
            ordered.append(item.product_code)
    return ordered


def exclude(items: Iterable[ScoredItem], banned: set[str], k: int) -> tuple[ScoredItem, ...]:
    """The first ``k`` items (in the given order) whose id is not banned, without duplicates."""
    out: list[ScoredItem] = []
    seen: set[str] = set()
    for item in items:
        if item.id in banned or item.id in seen:
            continue
        seen.add(item.id)
        out.append(item)
        if len(out) == k:
            break
    return tuple(out)


def merge_similar(
    per_code: Sequence[tuple[str, Sequence[ScoredItem]]], banned: set[str], k: int
) -> SimilarItems:
    """Merge the neighbour lists of several browsed items into one list of ``k``.

    ``per_code`` is in priority order (cart items first, see :func:`browse_order`). Items are taken
    round-robin across the lists, so the first browsed item cannot crowd out the others; an item that
    appears in several lists keeps its best score and first position; browsed items are excluded.
    ``product_code`` names the highest-priority browsed item that has neighbours (the lab's shape).
    """
    lists = [(code, list(items)) for code, items in per_code if items]
    if not lists:
        return SimilarItems(per_code[0][0] if per_code else None, ())
    out: dict[str, ScoredItem] = {}
    depth = max(len(items) for _, items in lists)
    for rank in range(depth):
        for _, items in lists:
            if rank >= len(items):
                continue
            item = items[rank]
            if item.id in banned:
                continue
            best = out.get(item.id)
            if best is None:
                if len(out) < k:
                    out[item.id] = item
            elif item.score > best.score:
                out[item.id] = ScoredItem(item.id, item.score)
        if len(out) >= k and rank >= 1:
            break
    return SimilarItems(lists[0][0], tuple(out.values())[:k])
