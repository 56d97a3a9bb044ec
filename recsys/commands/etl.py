"""``recsys etl``: the batch pipeline, shop database -> Parquet training data in the lake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.settings import Settings

if TYPE_CHECKING:
    from etl.pipeline import EtlSummary

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
    from core.errors import ConfigError
    from etl.gates import QualityGateFailed
    from etl.pipeline import parse_window, thresholds_of
    from infra.objectstore import open_store

    settings = settings_from(args)
    lake_uri = bootstrap.require(settings.lake, "--lake")
    bootstrap.prepare_aws(settings, lake_uri)
    source_url = bootstrap.source_url(settings)
    retention = None if args.retention_days is None else float(args.retention_days)
    if retention is not None and retention <= 0:
        raise ConfigError(f"--retention-days must be positive, got {args.retention_days}")
    since = parse_window(args.since, args.window, datetime.now(UTC))
    engine = args.engine or settings.etl.engine
    suppressed = _suppression_reader(settings)
    if suppressed is None:
        print("suppression list: none (no RECSYS_DATABASE_URL and no embedded stack running)")
    options = {
        "update_policy": args.update_policy or settings.etl.update_policy,
        "partition_by": args.partition_by or settings.etl.partition_by,
        "retention_days": retention,
        "file_max_rows": settings.etl.file_max_rows,
        "rating_time_column": settings.etl.rating_time_column,
        "update_time_column": settings.etl.update_time_column,
        "since": since,
        "thresholds": thresholds_of(settings.etl),
        "store": open_store(lake_uri),
        "suppressed": suppressed,
    }
    summary: EtlSummary
    try:
        if engine == "spark":
            summary = _run_spark(settings, source_url, lake_uri, options)
        else:
            from etl.pipeline import run_etl

            summary = run_etl(
                source_url,
                lake_uri,
                chunk_rows=settings.etl.chunk_rows,
                row_group_rows=settings.etl.row_group_rows,
                **options,  # type: ignore[arg-type]
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


def _run_spark(settings: Settings, source_url: str, lake_uri: str, options: dict[str, object]) -> EtlSummary:
    """The Spark engine on a local master (started for the run and stopped after it)."""
    from core.errors import ConfigError

    try:
        from etl.spark_job import run_local
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith(("pyspark", "py4j")):
            raise
        raise ConfigError(
            "--engine spark needs pyspark (pip install -r requirements-spark.lock; make install-dev "
            "does); on AWS the Glue job provides Spark (deploy/glue/)"
        ) from None
    return run_local(settings.etl, source_url, lake_uri, **options)


def _suppression_reader(settings: Settings) -> Callable[[], frozenset[int]] | None:
    """Reads the suppression list of the product database: ``RECSYS_DATABASE_URL``, else the
    embedded stack's when it is running (started by ``recsys stack up`` or a command before), else
    there is none to read."""
    from infra.suppression import read_suppressed
    from recsys.stack import LocalStack

    if settings.database_url is not None:
        url = bootstrap.database_url(settings)
    else:
        info = LocalStack(settings.state_dir).info()
        if info is None:
            return None
        url = info.database_url

    def read() -> frozenset[int]:
        return run_async(read_suppressed(url))

    return read
