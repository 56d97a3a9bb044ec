"""A consumer process for the crash, SIGTERM and outage tests: ``python consumer_process.py``.

It is ``recsys consume`` (the same ``recsys.runtime`` wiring) with a deterministic fake recommender
(the tests must not depend on a trained model) and no suppression list: settings from ``RECSYS_*``,
AWS from ``AWS_*``, SIGTERM/SIGINT drain and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from infra.logs import configure_logging
from recsys import runtime
from recsys.settings import Settings
from recsys.testing import FakeRecommender


async def main() -> int:
    settings = Settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with runtime.consumer(settings, recommender=FakeRecommender(), suppression=None) as consumer:
        print("consumer up", flush=True)
        await consumer.run(stop)
    print(f"stopped after {consumer.stats.delivered} delivered", flush=True)
    return 0


if __name__ == "__main__":
    configure_logging("INFO", "text")
    sys.exit(asyncio.run(main()))
