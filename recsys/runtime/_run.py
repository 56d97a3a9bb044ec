"""``recsys run``'s object graph: the consumer and the API in one task, with one shutdown.

SIGTERM (the caller's stop event): the consumer drains (in-flight batches delivered, checkpoints
written, leases released) while the API keeps answering; then the API drains its open requests.

Where the API runs (``--api-loop``):

- ``process`` (default): the API is ``recsys serve`` in a child process (``sys.executable -m
  recsys.cli serve``, settings passed in its environment), on a listening socket this process
  bound and hands down, with its own pool and its own handle on the active model version. No GIL
  and no garbage collector shared with the consumer: its tail latency holds under consumer load
  (``python -m bench api`` measures it). This process supervises it: a child that dies is
  restarted (with backoff; more than a few deaths a minute end ``recsys run`` with an error); on
  SIGTERM the consumer drains first while the child still answers, then the child gets SIGTERM and
  is waited for. The child watches a pipe from this process and stops when it closes, so it never
  outlives its parent. This process's Prometheus registry is served on an internal 127.0.0.1
  port; the child appends it to its ``/metrics``.
  A real ``recsys serve`` subprocess rather than ``multiprocessing``: the same entry point as a
  separate API container, nothing pickled (the settings travel as ``RECSYS_*`` variables, the
  socket and the pipe as inherited descriptors), and no re-import of the parent's ``__main__``.
- ``own``: the API runs on its own event loop in a thread of this process, with its own
  small PostgreSQL pool and its own handle on the same active model version (both follow the
  database's active version). The consumer's per-batch CPU work (decoding a GetRecords page,
  validating events, merging neighbour lists) holds *its* loop for tens to hundreds of
  milliseconds at full load; on its own loop the API waits at most a GIL switch interval instead.
  ``python -m bench api`` measures both.
- ``shared``: the API and the consumer on one loop, sharing one pool and one recommender object.
  Fewest resources; API tail latency follows the consumer's longest batch step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import ConfigError, InfraError
from infra.logs import get_logger
from recsys import bootstrap
from recsys.runtime._api import api as api_process_graph
from recsys.runtime._consumer import consumer as consumer_graph
from recsys.runtime._consumer import database
from recsys.runtime._heap import freeze_heap
from recsys.runtime._priority import Child, Spawner
from recsys.settings import Settings

__all__ = ["API_LOOPS", "DEFAULT_API_LOOP", "ApiLoop", "Running", "restart_delay", "running"]

log = get_logger(__name__)
ApiLoop = Literal["own", "shared", "process"]
API_LOOPS: tuple[ApiLoop, ...] = ("process", "own", "shared")
DEFAULT_API_LOOP: ApiLoop = "process"
_MODEL_WAIT_S = 60.0
_RESTARTS_MAX = 5  # API child restarts within _RESTARTS_WINDOW_S before `recsys run` gives up
_RESTARTS_WINDOW_S = 60.0
_BACKOFF_MAX_S = 10.0


@dataclass
class Running:
    """The consumer and the API, up. ``wait()`` returns when the stop event is set or either ends."""

    url: str
    consumer: Any  # consumer.app.Consumer
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
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            self._stop.set()
        # its own pool; opens the active model itself, and follows it
        async with api_process_graph(self.settings, self._stop) as up:
            model = up.app.state.services.model
            try:
                await asyncio.wait_for(model.wait_loaded(), _MODEL_WAIT_S)
            except TimeoutError:
                raise InfraError(f"the API could not open the model: {model.reason}") from None
            self.url.set_result(up.url)
            await up.wait()


def restart_delay(restarts: list[float], now: float) -> float:
    """Seconds to wait before restarting a dead API child, given the earlier restarts' times.

    Drops restarts older than the window from ``restarts`` (in place). 0.5 s, doubling with each
    restart in the window, at most 10 s; raises ``InfraError`` after ``_RESTARTS_MAX`` of them: a
    child that keeps dying is a failure to report, not to hide.
    """
    restarts[:] = [t for t in restarts if now - t < _RESTARTS_WINDOW_S]
    if len(restarts) >= _RESTARTS_MAX:
        raise InfraError(
            f"the API process died {len(restarts) + 1} times within {_RESTARTS_WINDOW_S:g} s; "
            "giving up (its log above says why)"
        )
    return min(_BACKOFF_MAX_S, 0.5 * 2.0 ** len(restarts))


class _ConsumerMetrics:
    """This process's Prometheus registry on an internal 127.0.0.1 port, for the API child to append."""

    def __init__(self) -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(0, addr="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._server.server_port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _ApiProcess:
    """``recsys serve`` in a child process, supervised: restarted when it dies, stopped on request.

    This process binds the listening socket and hands it down (so the port never changes and
    connections queue in the kernel while a child restarts), plus the read end of a pipe whose
    write end only this process holds: the child stops when it reads EOF, i.e. when this process
    is gone, however it ended. The child runs in its own session, so a terminal's Ctrl-C reaches
    only this process, which drains the consumer first and then stops the child with SIGTERM.
    """

    def __init__(self, settings: Settings, metrics: _ConsumerMetrics, spawner: Spawner) -> None:
        from service.server import bind_socket

        self.settings = settings
        self._spawner = spawner
        try:
            self.sock = bind_socket(settings.host, settings.port)
        except BaseException:
            metrics.close()
            raise
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self._parent_r, self._parent_w = os.pipe()
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.proc: Child | None = None
        self.restarts: list[float] = []  # monotonic times of the restarts

    def stop(self) -> None:
        self._stopping.set()

    def _env(self) -> dict[str, str]:
        settings = self.settings
        assert settings.database_url is not None
        env = dict(os.environ)
        env.update(
            RECSYS_DATABASE_URL=settings.database_url.get_secret_value(),
            RECSYS_HOST=settings.host,
            RECSYS_PORT=str(self.sock.getsockname()[1]),
            RECSYS_STATE_DIR=str(settings.state_dir),
            RECSYS_LOG_LEVEL=settings.log_level,
            RECSYS_LOG_FORMAT=settings.log_format,
        )
        env.pop("RECSYS_API_TOKEN", None)
        if settings.api_token is not None:
            env["RECSYS_API_TOKEN"] = settings.api_token.get_secret_value()
        api = settings.api.model_copy(
            update={
                "listen_fd": self.sock.fileno(),
                "parent_fd": self._parent_r,
                "consumer_metrics_url": self._metrics.url,
            }
        )
        for name, value in api.model_dump().items():
            key = f"RECSYS_API__{name.upper()}"
            env.pop(key, None)
            if value is not None:
                env[key] = str(value)
        return env

    async def _spawn(self) -> Child:
        # from the spawner's thread: the child starts at the priority the process started with,
        # whatever the consumer's threads were lowered to (recsys.runtime._priority)
        proc = await self._spawner.spawn(
            [sys.executable, "-m", "recsys.cli", "serve"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            pass_fds=(self.sock.fileno(), self._parent_r),
            start_new_session=True,
        )
        log.info("API process %d started", proc.pid)
        return proc

    async def _wait_ready(self, proc: Child) -> None:
        """Until ``/readyz`` says 200 (pool open, model loaded); raises if the child ends first."""
        import httpx

        deadline = time.monotonic() + _MODEL_WAIT_S
        reason = "no answer yet"
        exited = asyncio.ensure_future(proc.wait())
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                while time.monotonic() < deadline:
                    if exited.done():
                        raise InfraError(f"the API process exited with {proc.returncode} before it was ready")
                    if self._stopping.is_set():
                        raise InfraError("stopped before the API process was ready")
                    try:
                        response = await client.get(f"{self.url}/readyz")
                        if response.status_code == 200:
                            return
                        reason = response.text
                    except httpx.HTTPError as exc:
                        reason = repr(exc)
                    await asyncio.wait({exited}, timeout=0.1)
        finally:
            exited.cancel()
        raise InfraError(f"the API process was not ready within {_MODEL_WAIT_S:g} s: {reason}")

    async def _backoff(self) -> None:
        """Wait before a restart; raises ``InfraError`` when the child keeps dying."""
        now = time.monotonic()
        delay = restart_delay(self.restarts, now)
        self.restarts.append(now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _terminate(self, proc: Child) -> None:
        """SIGTERM, then wait for the drain (the API's shutdown timeout and a margin), then SIGKILL."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.api.shutdown_timeout_s + 5)
            except TimeoutError:
                log.warning("the API process %d did not stop in time; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            log.warning("the API process %d ended with %s", proc.pid, proc.returncode)

    async def run(self) -> None:
        """Start the child, report ready, restart it when it dies; on ``stop()``, end it and return."""
        proc: Child | None = None
        try:
            proc = self.proc = await self._spawn()
            await self._wait_ready(proc)
            self.ready.set_result(self.url)
            while True:
                stopping = asyncio.ensure_future(self._stopping.wait())
                exited = asyncio.ensure_future(proc.wait())
                try:
                    await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    exited.cancel()
                if self._stopping.is_set():
                    await self._terminate(proc)
                    return
                log.error("the API process %d died (exit %s); restarting it", proc.pid, proc.returncode)
                await self._backoff()
                if self._stopping.is_set():
                    return
                proc = self.proc = await self._spawn()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc if isinstance(exc, Exception) else InfraError("cancelled"))
            raise
        finally:
            if proc is not None and proc.returncode is None:  # an error or a cancellation: no orphan
                await asyncio.shield(self._terminate(proc))
            self.sock.close()
            os.close(self._parent_r)
            os.close(self._parent_w)
            await asyncio.shield(asyncio.to_thread(self._metrics.close))


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    stop: asyncio.Event,
    *,
    api_loop: ApiLoop = DEFAULT_API_LOOP,
    spawner: Spawner | None = None,
) -> AsyncIterator[Running]:
    """Start the consumer and the API; on exit (or ``stop``), drain the consumer, then the API.

    One pool and one handle on the active model version for the consumer (and, with ``shared``,
    for the API). Raises ``ModelNotReady`` when no model version is active (run `recsys
    load-vectors` first). ``spawner`` starts the API child (``process``): ``recsys run`` hands in
    the one it kept at the process's first priority before lowering the consumer's.
    """
    from consumer import metrics
    from service.model import open_recommender

    if api_loop not in API_LOOPS:
        raise ConfigError(f"--api-loop must be one of {', '.join(API_LOOPS)}, got {api_loop!r}")
    settings = bootstrap.with_database(settings)  # the API child and thread are handed the URL
    extra = settings.api.pool_max_size if api_loop == "shared" else 0
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(database(settings, min_size=2, max_size=10 + extra))
        recommender = await open_recommender(
            db,
            ef_search=settings.ef_search,
            exclude_bought=settings.exclude_bought,
            cache_keys=settings.consumer.cache_keys,
            observe=metrics.observe_cache,
        )
        stack.push_async_callback(recommender.close)
        consumer = await stack.enter_async_context(consumer_graph(settings, pool=db, recommender=recommender))
        consuming: asyncio.Future[None] = asyncio.create_task(consumer.run(stop), name="consumer")
        if api_loop == "shared":
            api_stop = asyncio.Event()
            consuming.add_done_callback(lambda _: api_stop.set())  # the API outlives the drain
            ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            async def serve_shared() -> None:
                try:
                    async with api_process_graph(settings, api_stop, pool=db, recommender=recommender) as up:
                        ready.set_result(up.url)
                        await up.wait()
                except BaseException as exc:
                    if not ready.done():
                        ready.set_exception(exc if isinstance(exc, Exception) else InfraError("cancelled"))
                    raise

            serving: asyncio.Future[None] = asyncio.create_task(serve_shared(), name="api")
        elif api_loop == "process":
            if spawner is None:
                spawner = Spawner()
                stack.callback(spawner.close)
            child = _ApiProcess(settings, _ConsumerMetrics(), spawner)
            consuming.add_done_callback(lambda _: child.stop())
            serving = asyncio.create_task(child.run(), name="api-process")
            ready = child.ready
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
