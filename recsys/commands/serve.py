"""``recsys serve``: the HTTP API on uvicorn, in our own event loop, stopped gracefully by SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from, stop_on_signals

__all__ = ["register"]


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


def _run(args: argparse.Namespace) -> int:
    settings = bootstrap.with_database(settings_from(args))

    async def main() -> None:
        from recsys import runtime

        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with runtime.api(settings, stop) as up:  # the model opens when one is active
                runtime.freeze_heap()
                auth = "bearer token required" if settings.api_token is not None else "no auth"
                print(f"API on {up.url}  (docs {up.url}/docs, metrics {up.url}/metrics, {auth})", flush=True)
                await up.wait()

    run_async(main(), fast_loop=True)  # the API is socket events all the way: measured in bench api
    return 0
