"""``recsys run``: the consumer and the API in one process (the container's entry point).

One process, one settings object, one shutdown: SIGTERM sets the stop event; the consumer drains
(in-flight batches delivered, checkpoints written, leases released) while the API keeps answering;
then the API drains its open requests and the process exits 0.

Where the API's event loop is (``--api-loop``):

- ``own`` (default): the API runs on its own event loop in a thread of this process, with its own
  small PostgreSQL pool and its own handle on the same active model version (both follow the
  database's active version). The consumer's per-batch CPU work (decoding a GetRecords page,
  validating events, merging neighbour lists) holds *its* loop for tens to hundreds of
  milliseconds at full load; on its own loop the API waits at most a GIL switch interval instead.
  ``python -m bench api`` measures both.
- ``shared``: the API and the consumer on one loop, sharing one pool and one recommender object.
  Fewest resources; API tail latency follows the consumer's longest batch step.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.commands.serve import freeze_heap, stop_on_signals, with_database
from recsys.core.errors import ConfigError, InfraError
from recsys.infra.logs import get_logger
from recsys.settings import Settings

__all__ = ["ApiLoop", "Running", "register", "running"]

log = get_logger(__name__)
ApiLoop = Literal["own", "shared"]
_MODEL_WAIT_S = 60.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "run",
        "consume the stream and serve the API in one process (the container entry point)",
        "The consumer (as `recsys consume`) and the API (as `recsys serve`) in one process. SIGTERM: "
        "the consumer drains and checkpoints, then the API stops; exit 0. See docs/api.md.",
    )
    flag(parser, "--host", "API address to listen on", metavar="HOST")
    flag(parser, "--port", "API port (0 = a free one)", type=int, metavar="PORT")
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    flag(parser, "--stream", "Kinesis stream to consume", metavar="NAME")
    flag(parser, "--delivery-stream", "Firehose delivery stream for the records", metavar="NAME")
    flag(parser, "--dead-letters", "where bad records go (s3://bucket/prefix or a path)", metavar="URI")
    flag(parser, "--initial-position", "where a new shard starts: TRIM_HORIZON or LATEST", metavar="P")
    flag(
        parser,
        "--api-loop",
        "own: the API on its own event loop thread (default; its latency holds under consumer "
        "load); shared: one loop, one pool and one model object for both",
        choices=["own", "shared"],
    )
    parser.set_defaults(func=_run)


@dataclass
class Running:
    """The consumer and the API, up. ``wait()`` returns when the stop event is set or either ends."""

    url: str
    consumer: Any  # recsys.consumer.app.Consumer
    stop: asyncio.Event
    tasks: tuple[asyncio.Future[None], ...]

    async def wait(self) -> None:
        stopped: asyncio.Future[Any] = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({stopped, *self.tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


class _ApiThread:
    """``recsys serve`` on its own event loop in a thread: own pool, same active model version."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="recsys-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Thread-safe: the API drains its open requests and its thread ends."""
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - the thread's top: hand every failure to the loop waiting
            if not self.url.done():
                self.url.set_exception(exc)
            self.done.set_exception(exc)
        else:
            if not self.url.done():
                self.url.set_exception(InfraError("the API stopped before it was ready"))
            self.done.set_result(None)

    async def _serve(self) -> None:
        from recsys.infra.pg import pool
        from recsys.service.app import create_app
        from recsys.service.server import ApiServer, bind_socket

        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            self._stop.set()
        settings = self.settings
        assert settings.database_url is not None
        api = settings.api
        async with pool(
            settings.database_url.get_secret_value(), min_size=api.pool_min_size, max_size=api.pool_max_size
        ) as db:
            app = create_app(settings, pool=db)  # opens the active model itself, and follows it
            server = ApiServer(app, bind_socket(settings.host, settings.port), api.shutdown_timeout_s)
            serving = asyncio.create_task(server.run(self._stop), name="api")
            await server.wait_ready()
            try:
                await asyncio.wait_for(app.state.services.model.wait_loaded(), _MODEL_WAIT_S)
            except TimeoutError:
                self._stop.set()
                await serving
                raise InfraError(
                    f"the API could not open the model: {app.state.services.model.reason}"
                ) from None
            self.url.set_result(server.url)
            await serving


@contextlib.asynccontextmanager
async def running(
    settings: Settings, stop: asyncio.Event, *, api_loop: ApiLoop = "own"
) -> AsyncIterator[Running]:
    """Start the consumer and the API; on exit (or ``stop``), drain the consumer, then the API.

    Raises ``ModelNotReady`` when no model version is active (run `recsys load-vectors` first).
    """
    from recsys.consumer.app import Consumer
    from recsys.infra.latest import PgLatestStore
    from recsys.infra.pg import pool
    from recsys.infra.suppression import SuppressionList
    from recsys.service.app import create_app
    from recsys.service.model import open_recommender
    from recsys.service.server import ApiServer, bind_socket

    if api_loop not in ("own", "shared"):
        raise ConfigError(f"--api-loop must be own or shared, got {api_loop!r}")
    assert settings.database_url is not None
    api = settings.api
    extra = api.pool_max_size if api_loop == "shared" else 0
    async with pool(settings.database_url.get_secret_value(), min_size=2, max_size=10 + extra) as db:
        recommender = await open_recommender(db)
        try:
            suppression = await SuppressionList.load(db)
            consumer = Consumer(settings, db, recommender, PgLatestStore(db), suppression=suppression)
            consuming: asyncio.Future[None] = asyncio.create_task(consumer.run(stop), name="consumer")
            if api_loop == "shared":
                server = ApiServer(
                    create_app(settings, pool=db, recommender=recommender),
                    bind_socket(settings.host, settings.port),
                    api.shutdown_timeout_s,
                )
                api_stop = asyncio.Event()
                consuming.add_done_callback(lambda _: api_stop.set())  # the API outlives the drain
                serving: asyncio.Future[None] = asyncio.create_task(server.run(api_stop), name="api")

                async def api_url() -> str:
                    await server.wait_ready()
                    return server.url

                ready: asyncio.Future[str] = asyncio.ensure_future(api_url())
            else:
                thread = _ApiThread(settings)
                thread.start()
                consuming.add_done_callback(lambda _: thread.stop())
                serving = asyncio.wrap_future(thread.done)
                ready = asyncio.wrap_future(thread.url)
            serving.add_done_callback(lambda _: stop.set())
            tasks = (consuming, serving)
            try:
                first: set[asyncio.Future[Any]] = {ready, consuming}
                done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done:
                    ready.cancel()  # the consumer's own error, raised below, says why
                    raise InfraError("the consumer stopped before the API was up")
                url = ready.result()
                freeze_heap()
                yield Running(url, consumer, stop, tasks)
            finally:
                stop.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        raise result
        finally:
            await asyncio.shield(recommender.close())


def _run(args: argparse.Namespace) -> int:
    settings = with_database(settings_from(args))
    bootstrap.prepare_aws(settings)
    api_loop: ApiLoop = "shared" if args.api_loop == "shared" else "own"

    async def main() -> None:
        from recsys.infra.pg import migrate

        assert settings.database_url is not None
        await migrate(settings.database_url.get_secret_value())
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with running(settings, stop, api_loop=api_loop) as up:
                print(
                    f"consuming {settings.stream} -> {settings.delivery_stream}; API on {up.url} "
                    f"(metrics {up.url}/metrics, API loop: {api_loop})",
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
