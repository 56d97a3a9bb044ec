"""``recsys run``: the consumer and the API in one process (the container's entry point).

Both share the settings, one PostgreSQL pool and one model. SIGTERM sets the stop event: the consumer
drains (in-flight batches delivered, checkpoints written, leases released) while the API keeps
answering; then the API drains its open requests and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.commands.serve import stop_on_signals, with_database
from recsys.core.errors import InfraError
from recsys.settings import Settings

__all__ = ["Running", "register", "running"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "run",
        "consume the stream and serve the API in one process (the container entry point)",
        "The consumer (as `recsys consume`) and the API (as `recsys serve`) sharing one pool and one "
        "model. SIGTERM: the consumer drains and checkpoints, then the API stops; exit 0.",
    )
    flag(parser, "--host", "API address to listen on", metavar="HOST")
    flag(parser, "--port", "API port (0 = a free one)", type=int, metavar="PORT")
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    flag(parser, "--stream", "Kinesis stream to consume", metavar="NAME")
    flag(parser, "--delivery-stream", "Firehose delivery stream for the records", metavar="NAME")
    flag(parser, "--dead-letters", "where bad records go (s3://bucket/prefix or a path)", metavar="URI")
    flag(parser, "--initial-position", "where a new shard starts: TRIM_HORIZON or LATEST", metavar="P")
    parser.set_defaults(func=_run)


@dataclass
class Running:
    """The consumer and the API, up. ``wait()`` returns when the stop event is set or either ends."""

    url: str
    consumer: Any  # recsys.consumer.app.Consumer
    recommender: Any
    pool: asyncpg.Pool[Any]
    stop: asyncio.Event
    tasks: tuple[asyncio.Task[None], ...]

    async def wait(self) -> None:
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({stopped, *self.tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


@contextlib.asynccontextmanager
async def running(settings: Settings, stop: asyncio.Event) -> AsyncIterator[Running]:
    """Start the consumer and the API; on exit (or ``stop``), drain the consumer, then the API.

    Raises ``ModelNotReady`` when no model version is active (run `recsys load-vectors` first).
    """
    from recsys.consumer.app import Consumer
    from recsys.infra.latest import PgLatestStore
    from recsys.infra.pg import pool
    from recsys.service.app import create_app
    from recsys.service.model import open_recommender
    from recsys.service.server import ApiServer, bind_socket

    assert settings.database_url is not None
    api = settings.api
    async with pool(
        settings.database_url.get_secret_value(), min_size=2, max_size=api.pool_max_size + 10
    ) as db:
        recommender = await open_recommender(db)
        try:
            consumer = Consumer(settings, db, recommender, PgLatestStore(db))
            app = create_app(settings, pool=db, recommender=recommender)
            server = ApiServer(app, bind_socket(settings.host, settings.port), api.shutdown_timeout_s)
            api_stop = asyncio.Event()
            consuming = asyncio.create_task(consumer.run(stop), name="consumer")
            consuming.add_done_callback(lambda _: api_stop.set())  # the API outlives the drain
            serving = asyncio.create_task(server.run(api_stop), name="api")
            serving.add_done_callback(lambda _: stop.set())
            tasks = (consuming, serving)
            try:
                ready = asyncio.create_task(server.wait_ready())
                done, _ = await asyncio.wait({ready, consuming}, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done:
                    ready.cancel()  # the consumer's own error, raised below, says why
                    raise InfraError("the consumer stopped before the API was up")
                ready.result()
                yield Running(server.url, consumer, recommender, db, stop, tasks)
            finally:
                stop.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        raise result
        finally:
            await recommender.close()


def _run(args: argparse.Namespace) -> int:
    settings = with_database(settings_from(args))

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with running(settings, stop) as up:
                print(
                    f"consuming {settings.stream} -> {settings.delivery_stream}; API on {up.url} "
                    f"(metrics {up.url}/metrics)",
                    flush=True,
                )
                await up.wait()
        stats = up.consumer.stats
        print(
            f"stopped: {stats.records_in} records in, {stats.delivered} delivered, "
            f"{stats.dead_lettered} dead-lettered",
            flush=True,
        )

    run_async(main())
    return 0
