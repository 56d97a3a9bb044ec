"""``recsys produce``: put lab-shaped browsing events onto a Kinesis stream (demos, load tests)."""

from __future__ import annotations

import argparse

from recsys.commands._common import add_command, flag, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "produce",
        "put browsing events drawn from the shop's customers and products onto a Kinesis stream",
    )
    flag(parser, "--stream", "the Kinesis stream", metavar="NAME")
    flag(parser, "--count", "how many events to send", type=int, metavar="N")
    flag(parser, "--duration", "send for this many seconds", type=float, metavar="S")
    flag(parser, "--rate", "events per second (default: as fast as possible)", type=float, metavar="R")
    flag(parser, "--aggregate", "pack events KPL-style (several per Kinesis record)", action="store_true")
    flag(parser, "--source-url", "the shop database; unset = the embedded one", metavar="URL")
    flag(parser, "--seed", "random seed of the generated events", type=int, metavar="N")
    flag(
        parser,
        "--shards",
        "on an emulator only: create the stream with this many shards if it is missing (default: 2)",
        type=int,
        metavar="N",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    settings = settings_from(args)
    summary = runtime.jobs.produce(
        settings,
        count=None if args.count is None else int(args.count),
        duration_s=None if args.duration is None else float(args.duration),
        rate=None if args.rate is None else float(args.rate),
        aggregate=bool(args.aggregate),
        seed=int(args.seed or 0),
        shards=int(args.shards or 2),
    )
    rate = summary.sent / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    print(
        f"sent {summary.sent} events in {summary.kinesis_records} Kinesis records "
        f"({summary.put_calls} PutRecords calls, {summary.failed_retried} rejected and resent) "
        f"to {settings.stream} in {summary.elapsed_s:.2f}s ({rate:.0f} events/s)"
    )
    return 0
