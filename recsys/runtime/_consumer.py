"""The consumer's object graph: PostgreSQL pool, model, suppression list, AWS clients, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from consumer import metrics
from consumer.app import Consumer, default_worker_id
from consumer.deadletters import DeadLetterStore
from consumer.kinesis import KinesisReader, parse_initial_position
from consumer.leases import PgLeaseTable
from consumer.ports import DeadLetterSink, LeaseTable, RecordReader, RecordSink, Suppression
from consumer.sink import FirehoseSink
from core.ports import LatestStore, Recommender
from infra.aws import fast_timestamps, region
from infra.latest import PgLatestStore
from recsys import bootstrap
from recsys.settings import Settings

if TYPE_CHECKING:
    from model_store.recommender import ModelRecommender

__all__ = ["DEFAULT", "SinkFactory", "aws_clients", "consumer", "database"]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Build the production adapter (``suppression=DEFAULT`` loads the list; ``None`` means none)."""

SinkFactory = Callable[..., RecordSink]
"""``(firehose client, delivery stream, *, timeout_s, pack_bytes)`` -> a sink; ``FirehoseSink`` or a
subclass."""


@contextlib.asynccontextmanager
async def aws_clients(settings: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """Kinesis and Firehose clients (aiobotocore) with the consumer's timeouts; closed on exit.

    Endpoint, region and credentials follow the SDK (``AWS_ENDPOINT_URL``, ``AWS_REGION``, the chain).
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    timeout = settings.consumer.aws_call_timeout_s
    config = AioConfig(
        region_name=region(),
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=50,
    )
    session = fast_timestamps(get_session())  # GetRecords' arrival times without dateutil
    async with contextlib.AsyncExitStack() as stack:
        kinesis = await stack.enter_async_context(session.create_client("kinesis", config=config))
        firehose = await stack.enter_async_context(session.create_client("firehose", config=config))
        yield kinesis, firehose


@contextlib.asynccontextmanager
async def database(
    settings: Settings, *, min_size: int = 2, max_size: int = 10
) -> AsyncIterator[asyncpg.Pool[Any]]:
    """The PostgreSQL pool of ``settings`` (the embedded stack's when none is given), migrated."""
    from infra.pg import migrate, pool

    url = bootstrap.database_url(settings)
    await migrate(url)
    async with pool(url, min_size=min_size, max_size=max_size) as opened:
        yield opened


async def _open_model(pool: asyncpg.Pool[Any], settings: Settings) -> ModelRecommender:
    """The active model version (NumPy only: the serving processes never import torch)."""
    from model_store.recommender import ModelRecommender

    return await ModelRecommender.open(
        pool,
        ef_search=settings.ef_search,
        exclude_bought=settings.exclude_bought,
        cache_keys=settings.consumer.cache_keys,
        observe=metrics.observe_cache,
    )


async def _discard(opening: asyncio.Task[ModelRecommender]) -> None:
    """Cancel a model still opening, or close it if it opened."""
    opening.cancel()
    with contextlib.suppress(BaseException):
        model = await opening
        await model.close()


@contextlib.asynccontextmanager
async def consumer(
    settings: Settings,
    *,
    pool: asyncpg.Pool[Any] | None = None,
    recommender: Recommender | None = None,
    latest: LatestStore | None = None,
    suppression: Suppression | None = DEFAULT,
    dead_letters: DeadLetterSink | None = None,
    reader: RecordReader | None = None,
    sink: RecordSink | None = None,
    leases: LeaseTable | None = None,
    kinesis: Any | None = None,
    firehose: Any | None = None,
    make_sink: SinkFactory = FirehoseSink,
    clock: Callable[[], float] = time.monotonic,
    worker_id: str | None = None,
) -> AsyncIterator[Consumer]:
    """A ``Consumer`` wired from ``settings``; every adapter can be handed in instead.

    Defaults: a migrated pool on ``settings``' database, the active model version
    (``ModelRecommender``, closed on exit), the latest-recommendations table, the suppression list,
    the dead-letter store at ``--dead-letters``, and Kinesis and Firehose clients made here. The
    caller runs it: ``async with consumer(settings) as c: await c.run(stop)``.
    """
    parse_initial_position(settings.initial_position)  # a bad value is reported before connecting
    config = settings.for_consumer()
    async with contextlib.AsyncExitStack() as stack:
        listen_url: str | None = None  # lease notifications on a connection of their own
        if pool is None:
            pool = await stack.enter_async_context(database(settings))
            listen_url = bootstrap.database_url(settings)
        # start-up: the model (reading the version) opens while the suppression list and the AWS
        # clients are made; a failure of either side closes what the other opened
        opening = asyncio.create_task(_open_model(pool, settings)) if recommender is None else None
        try:
            if suppression is DEFAULT:
                from infra.suppression import SuppressionList

                suppression = await SuppressionList.load(pool)
            if (reader is None and kinesis is None) or (sink is None and firehose is None):
                made_kinesis, made_firehose = await stack.enter_async_context(aws_clients(settings))
                kinesis = kinesis or made_kinesis
                firehose = firehose or made_firehose
            if opening is not None:
                model = await opening
                stack.push_async_callback(model.close)
                recommender = model
        except BaseException:
            if opening is not None:
                await _discard(opening)
            raise
        assert recommender is not None  # given, or opened above
        timeout_s = config.tuning.aws_call_timeout_s
        worker = worker_id or config.tuning.worker_id or default_worker_id()
        table = PgLeaseTable(pool, config.stream, worker, listen_url=listen_url)
        stack.push_async_callback(table.close)
        yield Consumer(
            config,
            leases=leases or table,
            reader=reader or KinesisReader(kinesis, config.stream, timeout_s),
            sink=sink
            or make_sink(
                firehose,
                config.delivery_stream,
                timeout_s=timeout_s,
                pack_bytes=config.tuning.firehose_pack_bytes,
            ),
            dead_letters=dead_letters or DeadLetterStore(config.dead_letters),
            recommender=recommender,
            latest=latest or PgLatestStore(pool),
            suppression=suppression,
            clock=clock,
        )
