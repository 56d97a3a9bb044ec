"""Ports: what the domain needs from the outside world, as ``typing.Protocol``\\ s.

Every adapter implementing one keeps the rules its docstrings state; in-memory doubles typed as these
Protocols (mypy checks them) are in ``recsys.testing``. The consumer's stream-side ports (reader,
lease table, sink, dead letters, suppression) are in ``consumer.ports``; the API's wider view of the
recommender is ``service.ports.ServingRecommender``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.recommendations import LatestRow, Recommendation, RecommendRequest, ScoredItem

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
        produced it and all entries of one call share that version; a request's answer does not
        depend on the rest of its batch; identical feature tuples are computed once; unknown
        categories and product codes degrade gracefully; a request with no personal answer gets
        popular items with ``fallback=True``. Raises ``ModelNotReady`` when no version is loaded,
        ``DatabaseUnavailable`` when the vector store cannot be reached (both retried by callers),
        and ``DataRejected`` when the store refuses the data of a request (text or a value it
        cannot hold): the caller isolates the request (``core.batch.answer_each``).
        """
        ...

    async def refresh(self) -> bool:
        """Switch to a newer active model version if there is one; True when it switched.

        Called periodically by supervising loops, between batches: a batch runs on one version.
        Raises ``DatabaseUnavailable`` when the check cannot be made (the current version stays)."""
        ...

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        """The ``k`` items nearest to ``product_code``. Raises ``NotFoundError`` for an unknown item."""
        ...

    async def popular_items(self, k: int) -> list[ScoredItem]:
        """The ``k`` most popular items of the current version (the fallback)."""
        ...


class LatestStore(Protocol):
    """The latest streamed recommendations per customer (written by the consumer, read by the API).

    The PostgreSQL adapter is ``infra.latest.PgLatestStore``.
    """

    async def upsert_many(self, rows: Sequence[LatestRow]) -> None:
        """Store rows; a row replaces the stored one only when strictly newer (event_time, event_id).

        Idempotent: replaying the same rows changes nothing. One round trip per call. Raises
        ``DatabaseUnavailable`` when the store cannot be reached, ``DataRejected`` when it refuses
        a row's data (nothing of the call is stored; the caller isolates the row).
        """
        ...

    async def get(self, customer_number: int) -> LatestRow | None:
        """The stored row of a customer, or ``None``. One round trip."""
        ...
