"""Ports: what the domain needs from the outside world, as ``typing.Protocol``\\ s.

Every adapter implementing one states the same rules; tests use in-memory fakes that record state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from core.recommendations import Recommendation, RecommendRequest, ScoredItem

__all__ = ["LatestStore", "Recommender"]


class Recommender(Protocol):
    """The model + vector index, as the consumer and the API see it."""

    @property
    def model_version(self) -> str:
        """The version that answers the next call. Changes only between calls (hot reload)."""
        ...

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        """Answer every request, in order, with one model forward and one database round trip.

        Rules: the result has ``len(requests)`` entries; every entry names the model version that
        produced it and all entries of one call share that version; identical feature tuples are
        computed once; unknown categories and product codes degrade gracefully; a request with no
        personal answer gets popular items with ``fallback=True``. Raises ``ModelNotReady`` when no
        version is loaded and ``DatabaseUnavailable`` when the vector store cannot be reached.
        """
        ...

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        """The ``k`` items nearest to ``product_code``. Raises ``NotFoundError`` for an unknown item."""
        ...

    async def popular_items(self, k: int) -> list[ScoredItem]:
        """The ``k`` most popular items of the current version (the fallback)."""
        ...


class LatestStore(Protocol):
    """The latest streamed recommendations per customer (written by the consumer, read by the API).

    The PostgreSQL adapter is ``infra.latest.PgLatestStore``; rows are ``LatestRow``\\ s.
    """

    async def upsert_many(self, rows: Sequence[Any]) -> None:
        """Store rows; a row replaces the stored one only when strictly newer (event_time, event_id).

        Idempotent: replaying the same rows changes nothing. One round trip per call.
        """
        ...

    async def get(self, customer_number: int) -> Any | None:
        """The stored row of a customer, or ``None``. One round trip."""
        ...
