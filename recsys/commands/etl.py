"""``recsys etl``: the batch pipeline, shop database -> Parquet training data in the lake."""

from __future__ import annotations

import argparse
import sys

from recsys.commands._common import add_command, flag, settings_from

__all__ = ["GATE_FAILED", "register"]

GATE_FAILED = 3  # exit code of a run that failed a data-quality gate (nothing published)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "etl",
        "read ratings JOIN products JOIN customers, write Parquet training data to the lake",
        "Stream ratings JOIN products JOIN customers from the shop database into snappy Parquet "
        "under <lake>/ratings_ml_training/, check it (data-quality gates), publish the run atomically "
        "(files, manifest, latest pointer) and optionally delete old runs. Customers on the suppression "
        "list of the product database (recsys forget --suppress; RECSYS_DATABASE_URL, else the running "
        "embedded stack) are left out. A run that fails a gate publishes nothing, writes its report "
        f"beside the run and exits {GATE_FAILED}. --engine spark runs the same job on PySpark (a local "
        "master; the same script is the AWS Glue job). See docs/etl.md.",
    )
    flag(
        parser,
        "--source-url",
        "the shop database (mysql+pymysql://user@host/db); unset = the embedded PostgreSQL shop",
        metavar="URL",
    )
    flag(parser, "--lake", "data lake URI: s3://bucket/prefix or a local folder", metavar="URI")
    flag(
        parser,
        "--database-url",
        "the product database whose suppression list is honoured; unset = the embedded stack's, when it runs",
        metavar="URL",
    )
    flag(
        parser,
        "--engine",
        "python: one process, bounded memory (default); spark: PySpark with a local master "
        "(Java 17 and the MariaDB JDBC driver; MySQL/MariaDB sources)",
        choices=["python", "spark"],
    )
    flag(
        parser,
        "--update-policy",
        "repeated ratings of a pair: replace (the later), latest (newest by time), average "
        "(default: replace; a source keyed on the pair has no repeats)",
        choices=["replace", "latest", "average"],
    )
    flag(
        parser,
        "--partition-by",
        "lake partitioning (default: none = few large files; customerNumber = a file per customer)",
        choices=["none", "country", "customerNumber"],
    )
    flag(
        parser,
        "--since",
        "incremental: read only ratings changed at or after this time (ISO-8601, UTC unless an offset "
        "is given), merged into the previous run and published as a new run",
        metavar="TIMESTAMP",
    )
    flag(
        parser,
        "--window",
        "incremental: read only ratings changed in the last N minutes/hours/days/weeks (1d, 12h, 30m, 2w)",
        metavar="N{m,h,d,w}",
    )
    flag(
        parser,
        "--retention-days",
        "after publishing, delete runs older than this (never the latest)",
        type=float,
        metavar="N",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from etl.gates import QualityGateFailed
    from recsys import runtime

    try:
        summary = runtime.jobs.etl(
            settings_from(args),
            engine=args.engine,
            since=args.since,
            window=args.window,
            retention_days=None if args.retention_days is None else float(args.retention_days),
            update_policy=args.update_policy,
            partition_by=args.partition_by,
            notes=print,
        )
    except QualityGateFailed as exc:
        print(f"recsys etl: {exc}", file=sys.stderr)
        return GATE_FAILED
    folded = f", {summary.repeats_folded} repeated ratings folded" if summary.repeats_folded else ""
    deleted = f"; retention deleted {len(summary.deleted_runs)} old run(s)" if summary.deleted_runs else ""
    if summary.suppressed_rows:
        folded += f", {summary.suppressed_rows} rows of suppressed customers left out"
    window = f" (ratings changed since {summary.since.isoformat()}, merged)" if summary.since else ""
    gates = "" if summary.quality is None else "; quality gates passed"
    print(
        f"etl run {summary.run_id}: {summary.rows_read} rows read{window}, "
        f"{summary.rows} rows written{folded} "
        f"to {summary.files} file(s) ({summary.bytes_written / 1e6:.1f} MB) under "
        f"{summary.lake}/{summary.dataset} in {summary.seconds:.1f}s ({summary.rows_per_s:,.0f} rows/s); "
        f"engine={summary.engine} update_policy={summary.update_policy} "
        f"partition_by={summary.partition_by}{gates}{deleted}"
    )
    return 0
