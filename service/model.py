"""Opening the model store's recommender for the API (the only place the service names it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from service.ports import ServingRecommender

__all__ = ["open_recommender"]


async def open_recommender(
    pool: asyncpg.Pool[Any],
    *,
    ef_search: int | None = None,
    cache_keys: int | None = None,
    observe: Callable[[str, int, int], None] | None = None,
    exclude_bought: bool = True,
) -> ServingRecommender:
    """The active model version's recommender; raises ``ModelNotReady`` when none is active.

    ``cache_keys`` / ``observe``: its candidate cache (default size) and who hears its hits and misses
    (``recsys run`` shares this object with the consumer, which sets both)."""
    from model_store.recommender import CACHE_KEYS, ModelRecommender

    return await ModelRecommender.open(
        pool,
        ef_search=ef_search,
        cache_keys=CACHE_KEYS if cache_keys is None else cache_keys,
        observe=observe,
        exclude_bought=exclude_bought,
    )
