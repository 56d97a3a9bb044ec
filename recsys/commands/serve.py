"""``recsys serve``: the HTTP API on uvicorn, in our own event loop, stopped gracefully by SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator

from pydantic import SecretStr

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.settings import Settings

__all__ = ["freeze_heap", "register", "serve", "stop_on_signals"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "serve",
        "the HTTP API: recommendations, lab inference endpoints, health probes, /metrics",
        "Serve GET /recommendations/{customer_number}, the lab's inference endpoints, /healthz, "
        "/readyz, /metrics and the OpenAPI document (/docs). RECSYS_API_TOKEN turns on bearer auth "
        "(checked before anything else; the probes, /metrics and the OpenAPI document stay open). "
        "Limits: request bodies RECSYS_API__MAX_BODY_BYTES (1 MiB, 413) received within "
        "RECSYS_API__BODY_TIMEOUT_S (30 s, 408), request heads within RECSYS_API__HEADER_TIMEOUT_S "
        "(10 s), idle connections RECSYS_API__KEEP_ALIVE_TIMEOUT_S (5 s), open connections "
        "RECSYS_API__MAX_CONNECTIONS (1000, then 503). SIGTERM drains open requests and exits 0. "
        "See docs/api.md.",
    )
    flag(parser, "--host", "address to listen on", metavar="HOST")
    flag(parser, "--port", "port to listen on (0 = a free one)", type=int, metavar="PORT")
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    parser.set_defaults(func=_run)


def with_database(settings: Settings) -> Settings:
    """Settings whose ``database_url`` is resolved (the embedded stack's when none is given)."""
    url = bootstrap.database_url(settings)
    return settings.model_copy(update={"database_url": SecretStr(url)})


def freeze_heap() -> None:
    """Move everything allocated at start-up (torch, botocore, the model) out of the cyclic GC's way.

    A full collection otherwise walks those ~300k long-lived objects and stops every thread for
    hundreds of milliseconds on a loaded 2-core machine (measured: 400-700 ms; 50-100 ms after
    freezing): the API's worst latencies. Call once, when the process is up.
    """
    import gc

    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (a second SIGINT interrupts at once)."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Open the pool, serve until ``stop`` is set, drain, close. The model opens when it is active."""
    from infra.pg import pool
    from service.app import create_app
    from service.server import ApiServer, bind_socket, inherited_socket, stop_when_closed

    assert settings.database_url is not None
    api = settings.api
    async with contextlib.AsyncExitStack() as stack:
        if api.parent_fd is not None:  # an API child of `recsys run`: never outlive the parent
            stack.enter_context(stop_when_closed(api.parent_fd, stop))
        db = await stack.enter_async_context(
            pool(
                settings.database_url.get_secret_value(),
                min_size=api.pool_min_size,
                max_size=api.pool_max_size,
            )
        )
        sock = (
            inherited_socket(api.listen_fd)
            if api.listen_fd is not None
            else bind_socket(settings.host, settings.port)
        )
        server = ApiServer(create_app(settings.for_api(), pool=db), sock, api)
        running = asyncio.create_task(server.run(stop), name="api")
        await server.wait_ready()
        freeze_heap()
        auth = "bearer token required" if settings.api_token is not None else "no auth"
        print(
            f"API on {server.url}  (docs {server.url}/docs, metrics {server.url}/metrics, {auth})", flush=True
        )
        await running


def _run(args: argparse.Namespace) -> int:
    settings = with_database(settings_from(args))

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve(settings, stop)

    run_async(main())
    return 0
