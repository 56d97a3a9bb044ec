"""Opening the model store's recommender for the API (the only place the service names it)."""

from __future__ import annotations

from typing import Any

import asyncpg

from recsys.service.ports import ServingRecommender

__all__ = ["open_recommender"]


async def open_recommender(pool: asyncpg.Pool[Any]) -> ServingRecommender:
    """The active model version's recommender; raises ``ModelNotReady`` when none is active."""
    from recsys.model_store.recommender import ModelRecommender

    return await ModelRecommender.open(pool)
