"""Customers suppressed with ``recsys forget --suppress``: their events are skipped, not delivered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from infra.suppression import SuppressionList


async def test_suppressed_customers_are_checkpointed_past_and_never_delivered(
    make_env: Any, pool: asyncpg.Pool[Any], h: Any
) -> None:
    env = make_env(shards=1)
    suppressed, kept = 4242, 4343
    await pool.execute(
        "INSERT INTO suppressed_customers (customer_number, actor) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        suppressed,
        "test",
    )
    try:
        ids = env.put([json.dumps(h.event(c, i)).encode() for i, c in enumerate([kept, suppressed, kept])])
        suppression = await SuppressionList.load(pool)
        stop = asyncio.Event()
        async with h.consumer(env, pool, suppression=suppression) as consumer:
            task = asyncio.create_task(consumer.run(stop))

            async def checkpointed_past_all() -> bool:
                seq = await pool.fetchval(
                    "SELECT checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream
                )
                return seq == ids[-1].split(":")[1]

            try:
                await h.wait_for(checkpointed_past_all, 60, "a checkpoint past the last record")
            finally:
                stop.set()
                await task
            outputs = env.outputs()
            assert {o["event_id"] for o in outputs} == {ids[0], ids[2]}
            assert all(o["customer_number"] == kept for o in outputs)
        assert consumer.stats.suppressed == 1
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM latest_recommendations WHERE customer_number = $1", suppressed
            )
            == 0
        )
    finally:
        await pool.execute("DELETE FROM suppressed_customers WHERE customer_number = $1", suppressed)
