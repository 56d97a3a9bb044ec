"""End to end on the moto server and the embedded PostgreSQL: Kinesis -> consumer -> Firehose -> S3."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg


async def test_n_events_in_exactly_n_event_ids_out(make_env: Any, pool: asyncpg.Pool[Any], h: Any) -> None:
    env = make_env(shards=2)
    events = [h.event(100 + i % 37, i) for i in range(300)]
    ids = env.put([json.dumps(e).encode() for e in events], key=lambda i: str(events[i]["customer_number"]))
    stop = asyncio.Event()
    async with h.consumer(env, pool) as consumer:
        task = asyncio.create_task(consumer.run(stop))
        await h.wait_for(
            lambda: {o["event_id"] for o in env.outputs()} >= set(ids), 60, "all events delivered"
        )
        stop.set()
        await task
    out = env.outputs()
    by_id = {o["event_id"]: o for o in out}
    assert set(by_id) == set(ids)
    for eid, sent in zip(ids, events, strict=True):
        got = by_id[eid]
        for key, value in sent.items():
            assert got[key] == value, key  # the input event unchanged
        assert got["model_version"] == "fake-1"
        assert got["recommended_items"] == [{"id": f"P{sent['customer_number'] % 97}", "score": 0.9}]
        assert got["similar_items"]["product_code"] == sent["browse_history"][0]["product_code"]
        assert got["processed_at"].endswith("+00:00")
    # clean shutdown: checkpoints written, leases released for a successor
    rows = await pool.fetch("SELECT owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream)
    assert len(rows) == 2 and all(r["owner"] is None for r in rows)
    assert all(r["checkpoint_seq"] is not None for r in rows)
    assert consumer.stats.delivered == len(ids)
    # the latest recommendation of each customer is stored
    latest = await pool.fetchval(
        "SELECT count(*) FROM latest_recommendations WHERE customer_number = ANY($1::int[])",
        list({e["customer_number"] for e in events}),
    )
    assert latest == 37
