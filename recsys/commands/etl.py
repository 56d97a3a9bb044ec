"""``recsys etl``: the batch pipeline, shop database -> Parquet training data in the lake."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from
from recsys.settings import Settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "etl",
        "read ratings JOIN products JOIN customers, write Parquet training data to the lake",
        "Stream ratings JOIN products JOIN customers from the shop database into snappy Parquet "
        "under <lake>/ratings_ml_training/, publish the run atomically (files, manifest, latest "
        "pointer) and optionally delete old runs. Customers on the suppression list of the product "
        "database (recsys forget --suppress; RECSYS_DATABASE_URL, else the running embedded stack) "
        "are left out. See docs/etl.md.",
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
        "--retention-days",
        "after publishing, delete runs older than this (never the latest)",
        type=float,
        metavar="N",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from etl.pipeline import run_etl
    from infra.objectstore import open_store

    settings = settings_from(args)
    lake_uri = bootstrap.require(settings.lake, "--lake")
    bootstrap.prepare_aws(settings, lake_uri)
    source_url = bootstrap.source_url(settings)
    retention = None if args.retention_days is None else float(args.retention_days)
    if retention is not None and retention <= 0:
        raise ConfigError(f"--retention-days must be positive, got {args.retention_days}")
    suppressed = _suppression_reader(settings)
    if suppressed is None:
        print("suppression list: none (no RECSYS_DATABASE_URL and no embedded stack running)")
    summary = run_etl(
        source_url,
        lake_uri,
        update_policy=args.update_policy or settings.etl.update_policy,
        partition_by=args.partition_by or settings.etl.partition_by,
        retention_days=retention,
        chunk_rows=settings.etl.chunk_rows,
        row_group_rows=settings.etl.row_group_rows,
        file_max_rows=settings.etl.file_max_rows,
        rating_time_column=settings.etl.rating_time_column,
        store=open_store(lake_uri),
        suppressed=suppressed,
    )
    folded = f", {summary.repeats_folded} repeated ratings folded" if summary.repeats_folded else ""
    deleted = f"; retention deleted {len(summary.deleted_runs)} old run(s)" if summary.deleted_runs else ""
    if summary.suppressed_rows:
        folded += f", {summary.suppressed_rows} rows of suppressed customers left out"
    print(
        f"etl run {summary.run_id}: {summary.rows_read} rows read, {summary.rows} rows written{folded} "
        f"to {summary.files} file(s) ({summary.bytes_written / 1e6:.1f} MB) under "
        f"{summary.lake}/{summary.dataset} in {summary.seconds:.1f}s ({summary.rows_per_s:,.0f} rows/s); "
        f"update_policy={summary.update_policy} partition_by={summary.partition_by}{deleted}"
    )
    return 0


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
