"""Opening the model store's recommender for the API (the only place the service names it).

The API's model path needs "the model's answer for a known customer". When the model store's
recommender does not offer ``recommend_customer`` itself, :class:`StoredUserEmbeddings` adds it from
the lab-compatible ``user_emb`` view (DESIGN.md: the active version's user embeddings) and the
recommender's own ``items_from_vector``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import asyncpg

from recsys.core.errors import DatabaseUnavailable
from recsys.core.events import UserFeatures
from recsys.core.recommendations import (
    Recommendation,
    RecommendRequest,
    ScoredItem,
    SimilarItems,
    Source,
)
from recsys.service.ports import LabRecommender, ServingRecommender

__all__ = ["StoredUserEmbeddings", "open_recommender", "serving"]


class StoredUserEmbeddings:
    """A ``ServingRecommender`` around a ``LabRecommender``: known customers' stored embeddings."""

    def __init__(self, inner: LabRecommender, pool: asyncpg.Pool[Any]) -> None:
        self._inner = inner
        self._pool = pool

    @property
    def model_version(self) -> str:
        return self._inner.model_version

    async def recommend_customer(self, customer_number: int, k: int) -> Recommendation | None:
        version = self._inner.model_version
        try:
            vector = await self._pool.fetchval(
                "SELECT embedding FROM user_emb WHERE id = $1", customer_number
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"reading the customer's embedding failed: {exc}") from exc
        if vector is None:
            return None
        items = await self._inner.items_from_vector([float(x) for x in vector], k)
        return Recommendation(tuple(items), SimilarItems(None, ()), version, Source.MODEL)

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        return await self._inner.recommend_batch(requests)

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        return await self._inner.similar_items(product_code, k)

    async def popular_items(self, k: int) -> list[ScoredItem]:
        return await self._inner.popular_items(k)

    async def user_embeddings(self, features: Sequence[UserFeatures]) -> list[list[float]]:
        return await self._inner.user_embeddings(features)

    async def items_from_vector(self, vector: Sequence[float], k: int) -> list[ScoredItem]:
        return await self._inner.items_from_vector(vector, k)

    async def refresh(self) -> bool:
        return await self._inner.refresh()

    async def close(self) -> None:
        await self._inner.close()


def serving(recommender: LabRecommender, pool: asyncpg.Pool[Any]) -> ServingRecommender:
    """``recommender`` itself when it answers for known customers, else wrapped to do so."""
    if callable(getattr(recommender, "recommend_customer", None)):
        return cast(ServingRecommender, recommender)
    return StoredUserEmbeddings(recommender, pool)


async def open_recommender(pool: asyncpg.Pool[Any]) -> ServingRecommender:
    """The current model version's recommender; raises ``ModelNotReady`` when none is active."""
    from recsys.model_store.recommender import ModelRecommender

    return serving(await ModelRecommender.open(pool), pool)
