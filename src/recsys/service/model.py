"""Opening the model store's recommender for the API (the only place the service names it)."""

from __future__ import annotations

import importlib
from typing import Any, cast

import asyncpg

from recsys.service.ports import ServingRecommender

__all__ = ["open_recommender"]


async def open_recommender(pool: asyncpg.Pool[Any]) -> ServingRecommender:
    """The current model version's recommender; raises ``ModelNotReady`` when none is active."""
    module = importlib.import_module("recsys.model_store.recommender")
    return cast(ServingRecommender, await module.ModelRecommender.open(pool))
