"""``recsys forget CUSTOMER_NUMBER``: delete a customer's data from every store the product writes."""

from __future__ import annotations

import argparse
import getpass
import os

from recsys.commands._common import add_command, flag, run_async, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "forget",
        "delete a customer's data everywhere the product stores it (right to erasure)",
        "Deletes the customer's rows from PostgreSQL (latest recommendations, the user vectors of every "
        "model version, any table keyed by customer number), the lake's training data (republished "
        "atomically), the artifact store's user embeddings, the delivered recommendation records and "
        "the dead letters. Writes an audit row (forget_audit). Idempotent. The shop's source database "
        "is out of scope. See docs/operations-drills.md.",
    )
    parser.add_argument("customer_number", type=int, metavar="CUSTOMER_NUMBER", help="the customer to forget")
    flag(parser, "--dry-run", "list what would change; change nothing", action="store_true")
    flag(
        parser,
        "--suppress",
        "also add the customer to suppressed_customers, the list consumers honour to drop their later "
        "events and recsys etl honours to leave their ratings out of the lake",
        action="store_true",
    )
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    flag(parser, "--lake", "the data lake: s3://bucket/prefix or a folder", metavar="URI")
    flag(parser, "--artifacts", "the ml-artifacts store: s3://bucket/prefix or a folder", metavar="URI")
    flag(
        parser,
        "--delivery",
        "where Firehose delivers the recommendation records (s3://bucket/prefix)",
        metavar="URI",
    )
    flag(parser, "--dead-letters", "the dead-letter store: s3://bucket/prefix or a folder", metavar="URI")
    parser.set_defaults(func=_run)


def actor() -> str:
    """Who runs the command: ``RECSYS_ACTOR`` (set it to a ticket or a person), else the OS user."""
    named = os.environ.get("RECSYS_ACTOR", "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    report = run_async(
        runtime.jobs.forget(
            settings_from(args),
            args.customer_number,
            actor=actor(),
            delivery=args.delivery,
            dry_run=bool(args.dry_run),
            suppress=bool(args.suppress),
        )
    )
    for line in report.lines():
        print(line)
    return 0
