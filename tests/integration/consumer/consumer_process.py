"""A consumer process for the crash and SIGTERM tests: ``python consumer_process.py``.

It is ``recsys consume`` with a deterministic fake recommender (the tests must not depend on a trained
model): settings from ``RECSYS_*``, AWS from ``AWS_*``, SIGTERM/SIGINT drain and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from consumer.app import Consumer
from core.recommendations import Recommendation, RecommendRequest, ScoredItem, SimilarItems
from infra.latest import PgLatestStore
from infra.logs import configure_logging
from infra.pg import pool
from recsys.settings import Settings


class Recommender:
    model_version = "fake-1"

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        return [
            Recommendation(
                (ScoredItem(f"P{(r.customer_number or 0) % 97}", 0.9),),
                SimilarItems(r.browse_history[0].product_code if r.browse_history else None, ()),
                self.model_version,
            )
            for r in requests
        ]

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        return []

    async def popular_items(self, k: int) -> list[ScoredItem]:
        return []


async def main() -> int:
    settings = Settings()
    assert settings.database_url is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with pool(settings.database_url.get_secret_value(), min_size=1, max_size=4) as pg:
        consumer = Consumer(settings.for_consumer(), pg, Recommender(), PgLatestStore(pg))
        await consumer.run(stop)
    print(f"stopped after {consumer.stats.delivered} delivered", flush=True)
    return 0


if __name__ == "__main__":
    configure_logging("INFO", "text")
    sys.exit(asyncio.run(main()))
