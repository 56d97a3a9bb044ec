"""A small world with every store the product writes, filled by the real pipeline pieces.

Shop (SQLite, the real seed generator) -> ETL twice into a moto S3 lake (an older run partitioned by
customer, the latest unpartitioned) plus an incomplete run -> train twice into a moto S3 artifact
store -> load-vectors both (two user-vector tables) -> events of several customers (and bad records)
streamed through the real consumer with the real model into Firehose (S3) and the dead letters.
Its own database on the embedded PostgreSQL, so forgetting touches no other test's rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from consumer.producer import produce
from consumer.setup import ensure_delivery_stream, ensure_stream
from etl.pipeline import run_etl
from etl.seed import seed
from etl.source import load_catalog
from infra.aws import sync_client
from infra.lake import latest_run
from infra.objectstore import open_store
from infra.pg import create_pool, new_database
from model_store.loader import load_vectors
from model_store.training import train
from recsys import runtime
from recsys.settings import ConsumerSettings, Settings, TrainSettings
from recsys.stack import StackInfo


@dataclass
class World:
    database_url: str
    bucket: str
    lake: str
    artifacts: str
    delivery: str
    dead_letters: str
    target: int  # the customer to forget
    others: list[int]  # customers whose data must survive
    versions: list[str] = field(default_factory=list)
    shop: str = ""  # the source database (SQLite)
    delivered: int = 0
    dead_lettered: int = 0


async def _own_database(database_url: str) -> str:
    return await new_database(database_url, "compliance")


def _bad_records(target: int, other: int) -> list[tuple[str, bytes]]:
    """Three dead letters per customer: JSON that fails validation, bytes that are not JSON, and
    a record naming the customer inside an array, under a partition key that is not theirs."""
    out: list[tuple[str, bytes]] = []
    for customer in (target, other):
        out.append((str(customer), orjson.dumps({"customer_number": customer, "browse_history": []})))
        out.append(("garbled", b'{"customer_number": ' + str(customer).encode() + b', "browse_hist'))
        out.append(("array", orjson.dumps({"customer_number": [customer], "browse_history": [{"x": 1}]})))
    return out


async def _stream(world: World, settings: Settings, pool: asyncpg.Pool[Any], shop: str) -> None:
    catalog = await asyncio.to_thread(load_catalog, shop)
    chosen = [c for c in catalog.customers if c.customer_number in {world.target, *world.others}]
    sent = await asyncio.to_thread(produce, settings.stream, chosen, catalog.product_codes, count=60, seed=3)
    kinesis = sync_client("kinesis")
    bad = _bad_records(world.target, world.others[0])
    kinesis.put_records(StreamName=settings.stream, Records=[{"PartitionKey": k, "Data": d} for k, d in bad])
    # the consumer as `recsys consume` wires it (the real model, the suppression list), on this pool
    async with runtime.consumer(settings, pool=pool) as consumer:
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while consumer.stats.delivered < sent.sent or consumer.stats.dead_lettered < len(bad):
            if task.done() or loop.time() > deadline:
                pytest.fail(f"the consumer did not process every event: {consumer.stats}")
            await asyncio.sleep(0.1)
        stop.set()
        await task
    world.delivered = consumer.stats.delivered
    world.dead_lettered = consumer.stats.dead_lettered


@pytest.fixture(scope="module")
async def world(
    stack: StackInfo, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("compliance")
    url = await _own_database(database_url)
    tag = uuid.uuid4().hex[:10]
    bucket = f"compliance-{tag}"
    sync_client("s3").create_bucket(Bucket=bucket)
    shop = f"sqlite:///{tmp / 'shop.db'}"
    await asyncio.to_thread(seed, shop, 0.2)
    catalog = await asyncio.to_thread(load_catalog, shop)
    numbers = [c.customer_number for c in catalog.customers]
    w = World(
        database_url=url,
        bucket=bucket,
        lake=f"s3://{bucket}/lake",
        artifacts=f"s3://{bucket}/ml-artifacts",
        delivery=f"s3://{bucket}/delivery",
        dead_letters=f"s3://{bucket}/dead-letters",
        target=numbers[1],
        others=[numbers[0], numbers[2], numbers[3]],
        shop=shop,
    )
    # the lake: an older complete run (a file per customer), the latest run, and an incomplete run
    await asyncio.to_thread(run_etl, shop, w.lake, partition_by="customerNumber")
    await asyncio.to_thread(run_etl, shop, w.lake)
    lake = open_store(w.lake)
    latest = latest_run(lake)
    lake.put_bytes(
        "ratings_ml_training/runs/20200101T000000000000Z-crash0/part-00000.parquet",
        lake.get_bytes(latest.files[0]),
    )
    # two model versions, both loaded (an old version can be re-activated without a reload)
    for seed_value in (1, 2):
        cfg = TrainSettings(epochs=3, patience=1, seed=seed_value)
        summary = await asyncio.to_thread(train, w.lake, w.artifacts, cfg)
        w.versions.append(summary.version)
        await load_vectors(url, w.artifacts, summary.version)
    # another per-customer state table: found by its customer_number column
    conn: asyncpg.Connection[Any] = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE customer_notes (customer_number integer, note text)")
        await conn.executemany(
            "INSERT INTO customer_notes VALUES ($1, $2)", [(n, f"note {n}") for n in [w.target, *w.others]]
        )
    finally:
        await conn.close()
    # the stream: the real consumer and model, Firehose into S3, dead letters into S3
    stream, delivery_stream = f"events-{tag}", f"recs-{tag}"
    await asyncio.to_thread(ensure_stream, stream, 2)
    await asyncio.to_thread(ensure_delivery_stream, delivery_stream, w.delivery)
    settings = Settings(
        state_dir=tmp,
        stream=stream,
        delivery_stream=delivery_stream,
        dead_letters=w.dead_letters,
        consumer=ConsumerSettings(
            lease_duration_s=3.0,
            lease_renew_interval_s=0.5,
            lease_take_interval_s=0.3,
            poll_interval_s=0.2,
            shutdown_deadline_s=20.0,
            aws_call_timeout_s=5.0,
        ),
    )
    pool = await create_pool(url, min_size=1, max_size=6)
    try:
        await _stream(w, settings, pool, shop)
    finally:
        await pool.close()
    yield w
