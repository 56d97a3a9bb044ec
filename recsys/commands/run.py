"""``recsys run``: the consumer and the API in one task (the container's entry point).

One settings object, one shutdown: SIGTERM sets the stop event; the consumer drains (in-flight
batches delivered, checkpoints written, leases released) while the API keeps answering; then the
API drains its open requests and the process exits 0. The graph, and where the API runs
(``--api-loop process|own|shared``), is ``recsys.runtime.running``'s.
"""

from __future__ import annotations

import argparse
import asyncio

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from, stop_on_signals

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "run",
        "consume the stream and serve the API in one task (the container entry point)",
        "The consumer (as `recsys consume`) and the API (as `recsys serve`, by default in a "
        "supervised child process) with one shutdown. SIGTERM: the consumer drains and checkpoints "
        "while the API answers, then the API stops; exit 0. See docs/api.md.",
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
        "process: the API in a supervised child process (default; its latency holds under "
        "consumer load); own: the API on its own event loop thread; shared: one loop, one pool "
        "and one model object for both",
        choices=["process", "own", "shared"],
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    settings = bootstrap.with_database(settings_from(args))
    bootstrap.prepare_aws(settings)
    api_loop: runtime.ApiLoop = next(
        (mode for mode in runtime.API_LOOPS if mode == args.api_loop), runtime.DEFAULT_API_LOOP
    )

    # the consumer below the API in CPU priority (RECSYS_CONSUMER__NICE); the API child is started
    # from a thread kept at this process's priority. With the API in this process, nothing is lowered.
    spawner = runtime.Spawner() if api_loop == "process" else None
    if spawner is not None:
        runtime.lower_priority(settings.consumer.nice, keep={spawner.native_id})

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with runtime.running(settings, stop, api_loop=api_loop, spawner=spawner) as up:
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
