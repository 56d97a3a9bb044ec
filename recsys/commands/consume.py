"""``recsys consume``: the streaming consumer (Kinesis -> recommender -> Firehose), until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from infra.logs import get_logger
from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.settings import Settings

if TYPE_CHECKING:
    from consumer.shard import ConsumerStats

__all__ = ["register"]

log = get_logger(__name__)

DEFAULT_EMULATOR_OUTPUT = "s3://recsys-output/recommendations"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "consume",
        "read browsing events from Kinesis, deliver recommendations through Firehose",
        "A KCL-style consumer: shard leases and checkpoints in PostgreSQL, KPL de-aggregation, one "
        "recommender call per batch, Firehose delivery, dead letters for bad records. Runs until "
        "SIGTERM/SIGINT, then drains, checkpoints and releases its leases. See docs/consumer.md.",
    )
    flag(parser, "--stream", "the Kinesis stream to read", metavar="NAME")
    flag(parser, "--delivery-stream", "the Firehose delivery stream to write", metavar="NAME")
    flag(
        parser,
        "--dead-letters",
        "where bad records go: s3://bucket/prefix or a folder (default: <state dir>/dead-letters)",
        metavar="URI",
    )
    flag(
        parser,
        "--initial-position",
        "where a shard without a checkpoint starts: TRIM_HORIZON, LATEST or AT_TIMESTAMP:<ISO time>",
        metavar="P",
    )
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    flag(
        parser,
        "--metrics-port",
        "serve this process's Prometheus metrics on 127.0.0.1:PORT/metrics (0 = a free one; default: "
        "none), for a `recsys serve` beside it to append to its /metrics (RECSYS_API__CONSUMER_METRICS_URL)",
        type=int,
        metavar="PORT",
    )
    flag(
        parser,
        "--output",
        "on an emulator only: create the delivery stream, writing to this S3 prefix, if it is "
        f"missing (default: {DEFAULT_EMULATOR_OUTPUT})",
        metavar="URI",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from consumer.kinesis import parse_initial_position

    settings = settings_from(args)
    parse_initial_position(settings.initial_position)  # a bad value is reported before connecting
    from recsys import runtime

    runtime.lower_priority(settings.consumer.nice)  # below a `recsys serve` beside it (0: unchanged)
    settings = bootstrap.with_database(settings)
    if bootstrap.prepare_aws(settings):
        from consumer.setup import ensure_delivery_stream

        ensure_delivery_stream(settings.delivery_stream, args.output or DEFAULT_EMULATOR_OUTPUT)
        if settings.dead_letters:
            bootstrap.prepare_aws(settings, settings.dead_letters)  # creates the bucket on the emulator
    stats = run_async(_consume(settings))
    print(
        f"consumer stopped: {stats.records_in} records in, {stats.delivered} delivered, "
        f"{stats.dead_lettered} dead-lettered"
    )
    return 0


async def _consume(settings: Settings) -> ConsumerStats:
    from recsys import runtime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    exporter = _metrics_server(settings.metrics_port)
    try:
        async with runtime.consumer(settings) as consumer:
            freezer = asyncio.create_task(_freeze_heap_once_up(consumer, stop))
            try:
                await consumer.run(stop)
            finally:
                freezer.cancel()
    finally:
        if exporter is not None:
            await asyncio.shield(asyncio.to_thread(_close_metrics_server, exporter))
    return consumer.stats


async def _freeze_heap_once_up(consumer: Any, stop: asyncio.Event) -> None:
    """Start-up's objects out of the GC's way (bench: ~1.5x recommend_batch), once the first batch
    is through (or after 10 s): the full collection it costs does not delay the first delivery."""
    from recsys import runtime

    for _ in range(100):  # 10 s at most
        if consumer.stats.batches or stop.is_set():
            break
        await asyncio.sleep(0.1)
    runtime.freeze_heap()


def _metrics_server(port: int | None) -> tuple[Any, threading.Thread] | None:
    """The default registry on 127.0.0.1:``port`` (never another interface: the task's localhost only)."""
    if port is None:
        return None
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from exc
    log.info("consumer metrics on http://127.0.0.1:%d/metrics", server.server_port)
    return server, thread


def _close_metrics_server(exporter: tuple[Any, threading.Thread]) -> None:
    server, thread = exporter
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
