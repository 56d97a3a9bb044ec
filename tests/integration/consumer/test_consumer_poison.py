"""Poison records on the real stack: moto Kinesis and Firehose, PostgreSQL, the real model.

One record must never stall a shard: every kind known to have done so (``recsys.testing.POISON``:
JSON nested 100,000 deep, text PostgreSQL or the encoder refuses, huge numbers, ...) sits between
good records; the good ones are delivered, each poison is dead-lettered with its reason, and the
checkpoint passes all of them. And a fuzzer: hostile records through the record path against the
real recommender and latest-recommendations table never make the database refuse a batch.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.kinesis import KinesisRecord
from consumer.kpl import deaggregate, is_aggregated
from core.batch import Refusal, answer_each, finish, triage
from core.recommendations import RecommendRequest
from infra.latest import PgLatestStore
from infra.pg import create_pool
from model_store.recommender import ModelRecommender
from recsys.testing import POISON

CODES = [f"S{10 + p}_{1000 + p}" for p in range(50)]  # the small model's catalog


def _good(customer: int, n: int) -> bytes:
    return json.dumps(
        {
            "session_id": f"s{n}",
            "customer_number": customer,
            "city": "Nantes",
            "country": "France",
            "credit_limit": 21000.0,
            "browse_history": [
                {"product_code": CODES[n % 50], "quantity": 1, "in_shopping_cart": n % 2 == 0}
            ],
        }
    ).encode()


async def test_good_records_around_every_poison_kind_are_delivered_and_the_checkpoint_passes_all(
    make_env: Any, model_database_url: str, h: Any
) -> None:
    env = make_env(shards=1)
    kinds = list(POISON.items())
    good_before = [_good(100 + i, i) for i in range(5)]
    good_after = [_good(110 + i, 10 + i) for i in range(5)]
    ids = env.put([*good_before, *(data for _, (data, _) in kinds), *good_after])
    good_ids = {*ids[:5], *ids[-5:]}
    poison_ids = dict(zip(ids[5:-5], kinds, strict=True))
    last_seq = ids[-1].split(":")[1]
    pool = await create_pool(model_database_url, min_size=1, max_size=6)

    async def settled() -> bool:
        seq = await pool.fetchval("SELECT checkpoint_seq FROM kinesis_leases WHERE stream = $1", env.stream)
        return seq == last_seq and {o["event_id"] for o in env.outputs()} >= good_ids

    try:
        stop = asyncio.Event()
        # the real model and latest table; no fake anywhere on the record path
        async with h.consumer(env, pool, recommender=None) as consumer:
            task = asyncio.create_task(consumer.run(stop))
            try:
                await h.wait_for(
                    settled, 90, "the good records delivered and the checkpoint past every record"
                )
            finally:
                stop.set()
                await task
        assert {o["event_id"] for o in env.outputs()} == good_ids
        letters = {f"{x['shard_id']}:{x['sequence_number']}": x for x in env.dead_letters()}
        assert set(letters) == set(poison_ids)
        for eid, (name, (data, reason)) in poison_ids.items():
            assert letters[eid]["reason"] == reason, name
            assert letters[eid]["data"] == data, name
        assert consumer.stats.dead_lettered == len(kinds)
        stored = await pool.fetch(
            "SELECT customer_number, event_id FROM latest_recommendations WHERE event_id = ANY($1::text[])",
            sorted(good_ids),
        )
        assert len(stored) == len(good_ids)
    finally:
        await pool.close()


FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def on_the_database(model_database_url: str) -> Any:
    """(event loop, pool, recommender) for the fuzzer's examples: its own loop, opened once."""
    loop = asyncio.new_event_loop()
    pool: asyncpg.Pool[Any] = loop.run_until_complete(create_pool(model_database_url, min_size=1, max_size=2))
    recommender = loop.run_until_complete(ModelRecommender.open(pool, cache_keys=0))
    yield loop, pool, recommender
    loop.run_until_complete(recommender.close())
    loop.run_until_complete(pool.close())
    loop.close()


@FUZZ
@given(data=st.data())
def test_hostile_records_never_make_the_database_refuse_a_batch(
    data: st.DataObject, hostile_record: st.SearchStrategy[bytes], on_the_database: Any
) -> None:
    """What core validation lets through, PostgreSQL and the encoder accept: the features, the
    model, the nearest-item query and the latest table take every accepted event of a batch."""
    good = st.builds(_good, st.integers(100, 159), st.integers(0, 49))
    datas = data.draw(st.lists(st.one_of(hostile_record, good), max_size=6))
    loop, pool, recommender = on_the_database
    loop.run_until_complete(_through_the_database(pool, recommender, datas))


async def _through_the_database(
    pool: asyncpg.Pool[Any], recommender: ModelRecommender, datas: list[bytes]
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    records = [KinesisRecord(str(100 + i), str(i), d, now) for i, d in enumerate(datas)]
    plan = triage(records, shard_id="fuzz", after=None, split=deaggregate, is_aggregated=is_aggregated)
    requests = [
        RecommendRequest(a.event.customer_number, a.event.features, a.event.browse_history, 5)
        for a in plan.accepted
    ]
    answers = await answer_each(requests, recommender.recommend_batch, reason="recommend_failed")
    assert [a for a in answers if isinstance(a, Refusal)] == []
    done = finish(plan.accepted, answers, shard_id="fuzz", now=now, encode=orjson.dumps)
    await PgLatestStore(pool).upsert_many([d.row for d in done.deliveries])  # raises if refused
    assert {d.reason for d in done.dead} <= {"unencodable", "result_too_large"}
