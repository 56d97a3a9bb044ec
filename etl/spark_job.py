"""The ETL as a PySpark job: ``recsys etl --engine spark`` on a local master, and the AWS Glue 5 job
script (Spark 3.5, Python 3.11; ``python etl/spark_job.py --lake ... --source-url-secret ...``).

The same transform and lake contract as :mod:`etl.pipeline`, distributed:

* **read**: the same ``ratings JOIN products JOIN customers`` SQL (built by the Python engine's own
  query builder, so the join has the same semantics on the same database), read over JDBC in
  ``read_partitions`` parallel ranges of ``customerNumber``; the source schema (tables, columns,
  the key on the pair) is checked by the driver with the Python engine's checks and messages;
* **fold**: repeated ratings of a pair by the same update policy (a window per pair);
* **suppression list**: read by the driver at the start and again before publishing, as in the
  Python engine; suppressed customers' rows are dropped before anything is written;
* **gates**: the same checks (:mod:`etl.gates`), counted by Spark, evaluated *before* writing;
* **write**: Spark writes snappy Parquet to a staging folder (a local one on a local master, the
  lake itself on a cluster), then the driver moves each file to the Python engine's key
  (``runs/<run_id>/[country=France/]part-00000.parquet``) and publishes the run through
  :func:`infra.lake.publish_run`: files, manifest, ``_latest.json``; retention as in the Python engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pyarrow.parquet as pq
import sqlalchemy as sa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.errors import ConfigError, InfraError, RecsysError, SourceSchemaError
from etl.config import EtlSettings
from etl.gates import QualityCounts, QualityGateFailed, Thresholds
from etl.pipeline import (
    PARTITIONS,
    EtlSummary,
    SuppressedDuringRun,
    _query,
    _tables,
    _Window,
    _window_clause,
    apply_retention,
    check_incremental,
    gate,
    parse_window,
    previous_run,
    thresholds_of,
    update_column,
)
from etl.policies import POLICIES
from etl.source import REQUIRED_COLUMNS, check_schema, open_source, source_errors
from infra.lake import COLUMNS, SCHEMA, TRAINING_DATASET, LakeRun, new_run_id, publish_run, run_prefix
from infra.logs import get_logger
from infra.objectstore import LocalStore, ObjectStore, S3Store, open_store, parse_uri
from infra.urls import check_url, redact_url, scrub

__all__ = [
    "JdbcSource",
    "SparkJobFailed",
    "jdbc_source",
    "main",
    "run_local",
    "run_spark_etl",
    "spark_session",
]

log = get_logger(__name__)

_TIME = "_rated_at"  # the time column read for the policies (not written), as in etl.pipeline
_READ = "_read"  # read order, for replace without a time column
_SUP, _PREV, _PART = "_suppressed", "_previous", "_partition"
_STAGING = "_staging"

# the lake contract's types, as Spark types (cast after the read: JDBC gives int, short, decimal)
_SPARK_TYPES: dict[str, T.DataType] = {
    "int64": T.LongType(),
    "string": T.StringType(),
    "double": T.DoubleType(),
}
_ARROW_NAMES = {"bigint": "int64", "string": "string", "double": "double"}


@dataclass(frozen=True, slots=True)
class JdbcSource:
    """A JDBC URL and properties for the shop database (MySQL/MariaDB, the MariaDB driver)."""

    url: str
    user: str
    password: str
    database: str

    def options(self, fetch_rows: int) -> dict[str, str]:
        return {
            "url": self.url,
            "user": self.user,
            "password": self.password,
            "driver": "org.mariadb.jdbc.Driver",
            "fetchsize": str(fetch_rows),
            # the same session as the Python engine's: timestamps in UTC
            "sessionInitStatement": "SET SESSION time_zone = '+00:00'",
        }


def jdbc_source(source_url: str) -> JdbcSource:
    """The JDBC form of a SQLAlchemy ``mysql+pymysql://user:pass@host:port/db`` URL."""
    check_url(source_url, "--source-url")
    try:
        url = sa.make_url(source_url)
    except sa.exc.ArgumentError as exc:
        # not echoed: in text that is not a URL, nothing tells which part is a secret
        raise ConfigError("--source-url is not a database URL (e.g. mysql+pymysql://root@host/db)") from exc
    if url.get_backend_name() not in ("mysql", "mariadb"):
        raise ConfigError(
            f"--engine spark reads MySQL/MariaDB sources over JDBC, not {url.get_backend_name()!r} "
            f"({redact_url(source_url)}); use --engine python for it"
        )
    if not url.database:
        raise ConfigError(f"--source-url {redact_url(source_url)} names no database")
    host = url.host or "127.0.0.1"
    return JdbcSource(
        # the jdbc:mysql scheme selects Spark's MySQL dialect (backquoted names); the MariaDB driver
        # takes it (permitMysqlScheme: Connector/J 3 asks for it, 2.x ignores it)
        url=f"jdbc:mysql://{host}:{url.port or 3306}/{url.database}?permitMysqlScheme",
        user=url.username or "",
        password=url.password or "",
        database=url.database,
    )


def spark_session(settings: EtlSettings, *, cluster: bool = False) -> SparkSession:
    """The running session (a test's), else a new one: on a cluster (Glue, spark-submit) with the
    cluster's own master and jars, otherwise on ``settings.spark_master`` with the JDBC jar."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if cluster or os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit / Glue
        return SparkSession.builder.appName("recsys-etl").getOrCreate()
    jars = [j.strip() for j in settings.spark_jdbc_jars.split(",") if j.strip()]
    missing = [j for j in jars if "://" not in j and not Path(j).is_file()]
    if missing:
        raise ConfigError(
            f"the MariaDB JDBC driver is missing ({', '.join(missing)}): apt-get install libmariadb-java, "
            "or point RECSYS_ETL__SPARK_JDBC_JARS at a MariaDB Connector/J jar"
        )
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ConfigError("--engine spark needs Java 17 (apt-get install openjdk-17-jre-headless)")
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no guessing at the host's address
    builder = (
        SparkSession.builder.appName("recsys-etl")
        .master(settings.spark_master)
        .config("spark.jars", ",".join(jars))
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # no _SUCCESS marker or .crc side files in the staging folder
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.hadoop.fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def run_local(settings: EtlSettings, source_url: str, lake_uri: str, **options: Any) -> EtlSummary:
    """``recsys etl --engine spark``: :func:`run_spark_etl` on the running session, else on a local
    one started for this run (and stopped after it); ``options`` are ``run_spark_etl``'s."""
    ours = SparkSession.getActiveSession() is None
    spark = spark_session(settings)
    try:
        return run_spark_etl(
            spark,
            source_url,
            lake_uri,
            read_partitions=settings.spark_read_partitions,
            fetch_rows=settings.spark_fetch_rows,
            **options,
        )
    finally:
        if ours:
            spark.stop()


def _compile(query: Any, engine: sa.engine.Engine) -> str:
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def _contract(df: DataFrame) -> DataFrame:
    """The lake contract's columns and types (money and ratings as doubles, counts as int64)."""
    extra = [c for c in df.columns if c not in COLUMNS]
    typed = [F.col(f.name).cast(_SPARK_TYPES[str(f.type)]).alias(f.name) for f in SCHEMA]
    return df.select(*typed, *extra)


def _fold(df: DataFrame, policy: str, has_time: bool) -> DataFrame:
    """One row per pair, as etl.policies.RepeatReducer folds a pair's rows read in time order."""
    pair = ["customerNumber", "productCode"]
    if policy == "average":
        others = [F.last(c).alias(c) for c in df.columns if c not in (*pair, "productRating", _READ)]
        return df.groupBy(*pair).agg(F.avg("productRating").alias("productRating"), *others)
    if has_time:
        # the newest by time; among equal times the later read; a pair without any time keeps
        # its first row under latest (RepeatReducer), its last under replace
        t = F.col(_TIME)
        tie = (
            F.when(t.isNull(), F.col(_READ)).otherwise(-F.col(_READ)) if policy == "latest" else -F.col(_READ)
        )
        order = [t.desc_nulls_last(), tie.asc()]
    else:
        order = [F.col(_READ).desc()]
    ranked = df.withColumn("_rank", F.row_number().over(Window.partitionBy(*pair).orderBy(*order)))
    return ranked.filter(F.col("_rank") == 1).drop("_rank")


def _is_string(field: Any) -> bool:
    return str(field.type) == "string"


def _required() -> list[Any]:
    """The contract's columns; the non-nullable ones written as required Parquet fields, as the
    Python engine writes them (a null there fails the write, as it does in pyarrow)."""
    out = []
    for f in SCHEMA:
        column = F.col(f.name)
        if not f.nullable:
            # a null fails the write; the literal (never reached) is what makes Spark see the
            # column as non-nullable
            checked = F.when(column.isNull(), F.raise_error(F.lit(f"null {f.name} in a row to write")))
            never = F.lit("" if _is_string(f) else 0).cast(_SPARK_TYPES[str(f.type)])
            column = F.coalesce(checked.otherwise(column), never)
        out.append(column.alias(f.name))
    return out


def _staged_files(root: Path) -> list[tuple[str, Path]]:
    """(folder value or "", file) of the Parquet files Spark wrote under ``root``, in name order."""
    found: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*.parquet")):
        rel = path.relative_to(root).parts
        folder = ""
        if len(rel) > 1 and rel[0].startswith(f"{_PART}="):
            folder = unquote(rel[0].split("=", 1)[1])
        found.append((folder, path))
    return found


def _final_key(prefix: str, partition_by: str, folder: str, counters: dict[str, int]) -> str:
    sub = ""
    if partition_by != "none":
        sub = (
            f"{partition_by}={quote(folder, safe='') if folder != '__HIVE_DEFAULT_PARTITION__' else folder}/"
        )
    number = counters.get(sub, 0)
    counters[sub] = number + 1
    return f"{prefix}{sub}part-{number:05d}.parquet"


def _empty_file(workdir: Path) -> Path:
    """A Parquet file of the contract's schema and no rows (an empty source still publishes a run)."""
    path = workdir / "empty.parquet"
    pq.write_table(SCHEMA.empty_table(), path, compression="snappy")
    return path


def _spark_path(lake: ObjectStore, key: str) -> str:
    """The lake key as a path Spark's own filesystem reads and writes (on a cluster: s3://)."""
    if isinstance(lake, LocalStore):
        return str(Path(lake.uri) / key)
    return f"{lake.uri}/{key}"


def _move(lake: ObjectStore, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` inside the lake (a cluster wrote the staging files there)."""
    if isinstance(lake, LocalStore):
        (Path(lake.uri) / target).parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(lake.uri) / source, Path(lake.uri) / target)
        return
    if isinstance(lake, S3Store):
        from infra.aws import sync_client

        loc = parse_uri(lake.uri)

        def full(key: str) -> str:
            return f"{loc.prefix}/{key}" if loc.prefix else key

        client: Any = sync_client("s3")
        client.copy({"Bucket": loc.bucket, "Key": full(source)}, loc.bucket, full(target))
        lake.delete([source])
        return
    raise ConfigError(f"cannot move objects in {lake.uri}")


def run_spark_etl(
    spark: SparkSession,
    source_url: str,
    lake_uri: str,
    *,
    update_policy: str = "replace",
    partition_by: str = "none",
    retention_days: float | None = None,
    file_max_rows: int = 5_000_000,
    rating_time_column: str = "ratedAt",
    update_time_column: str = "updatedAt",
    since: datetime | None = None,
    thresholds: Thresholds | None = Thresholds(),  # noqa: B008 - frozen
    read_partitions: int = 4,
    fetch_rows: int = 10_000,
    dataset: str = TRAINING_DATASET,
    store: ObjectStore | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    suppressed: Callable[[], Collection[int]] | None = None,
    stage_locally: bool | None = None,
) -> EtlSummary:
    """:func:`etl.pipeline.run_etl` as a Spark job: the same arguments, rows, lake run and errors.

    ``stage_locally`` (default: when the master is local) has Spark write to a local folder that
    the driver uploads; otherwise Spark writes into the lake (``s3://`` on Glue) and the driver
    renames the files there.
    """
    if update_policy not in POLICIES:
        raise ConfigError(f"--update-policy must be one of {', '.join(POLICIES)}, got {update_policy!r}")
    if partition_by not in PARTITIONS:
        raise ConfigError(f"--partition-by must be one of {', '.join(PARTITIONS)}, got {partition_by!r}")
    if retention_days is not None and not retention_days > 0:
        raise ConfigError(f"--retention-days must be positive, got {retention_days}")
    jdbc = jdbc_source(source_url)
    lake = store if store is not None else open_store(lake_uri)
    if stage_locally is None:
        stage_locally = str(spark.sparkContext.master or "").startswith("local")
    started = time.perf_counter()
    run_id = new_run_id(clock())
    prefix = run_prefix(run_id, dataset)
    shown_source = redact_url(source_url)
    previous = previous_run(lake, dataset)
    if since is not None:
        previous = check_incremental(previous, partition_by, lake.uri, dataset)
    excluded = frozenset(suppressed()) if suppressed is not None else frozenset()
    engine = open_source(source_url)
    counts = QualityCounts()
    cached: list[DataFrame] = []
    moved = False
    scratch = Path(tempfile.mkdtemp(prefix="recsys-spark-etl-"))  # staging, previous run's files
    try:
        with source_errors(source_url):
            names = check_schema(engine, REQUIRED_COLUMNS)
            pk = sa.inspect(engine).get_pk_constraint(names["ratings"]["__table__"])
            key_cols = {str(col).lower() for col in (pk or {}).get("constrained_columns") or []}
            dedupe = key_cols != {"customernumber", "productcode"}
            time_column = None
            if dedupe and update_policy != "average":
                try:
                    ratings_cols = {"ratings": (*REQUIRED_COLUMNS["ratings"], rating_time_column)}
                    names["ratings"] = check_schema(engine, ratings_cols)["ratings"]
                    time_column = rating_time_column
                except SourceSchemaError:
                    if update_policy == "latest":
                        raise
            window = None
            if since is not None:
                names["ratings"][update_time_column] = update_column(engine, names, update_time_column)
                window = _Window(update_time_column, since, dedupe)
            join_sql = _compile(_query(names, "none", False, time_column, window), engine)
            orphan_sql = _compile(_orphan_query(names, window), engine)
            bounds = _bounds(engine, names)
        log.info(
            "spark etl run %s: %s -> %s/%s",
            run_id,
            shown_source,
            lake.uri,
            prefix,
            extra={
                "fields": {"update_policy": update_policy, "partition_by": partition_by, "dedupe": dedupe}
            },
        )
        opts = jdbc.options(fetch_rows)
        reader = spark.read.format("jdbc").options(**opts).option("dbtable", f"({join_sql}) AS j")
        if bounds is not None and read_partitions > 1:
            reader = (
                reader.option("partitionColumn", "customerNumber")
                .option("lowerBound", str(bounds[0]))
                .option("upperBound", str(bounds[1] + 1))
                .option("numPartitions", str(read_partitions))
            )
        raw = reader.load().withColumn(_READ, F.monotonically_increasing_id())
        rows_read: int | None = None
        if dedupe:
            raw = raw.persist()
            cached.append(raw)
            rows_read = raw.count()
            folded = _fold(raw, update_policy, time_column is not None)
        else:
            folded = raw
        folded = _contract(folded).select(*COLUMNS)
        banned = (
            spark.createDataFrame([(n,) for n in sorted(excluded)], "customerNumber long")
            if excluded
            else None
        )

        def mark(df: DataFrame) -> DataFrame:
            if banned is None:
                return df.withColumn(_SUP, F.lit(False))
            flagged = banned.withColumn(_SUP, F.lit(True))
            joined = df.join(F.broadcast(flagged), "customerNumber", "left")
            return joined.select(*COLUMNS, F.coalesce(F.col(_SUP), F.lit(False)).alias(_SUP))

        result = mark(folded).withColumn(_PREV, F.lit(False))
        if window is not None and previous is not None:
            result = result.unionByName(
                _previous_rows(
                    spark,
                    lake,
                    previous=previous,
                    window_rows=folded,
                    mark=mark,
                    workdir=scratch if stage_locally else None,
                )
            )
        if partition_by != "none":
            result = result.withColumn(_PART, F.col(partition_by).cast("string"))
        result = result.persist()
        cached.append(result)
        stats = _stats(result, thresholds)
        rows = int(stats["rows"])
        suppressed_rows = int(stats["suppressed"])
        window_rows = int(stats["window_rows"])  # the rows this run read, folded (with suppressed)
        if rows_read is None:
            rows_read = window_rows
        counts.rows, counts.bad_ratings = rows, int(stats["bad"])
        counts.written_schema = _arrow_schema(result.select(*COLUMNS))
        if thresholds is not None:
            _sample_bad(result, thresholds, counts)
            _count_orphans(
                spark,
                opts,
                orphan_sql=orphan_sql,
                excluded=excluded,
                counts=counts,
                sample_keys=thresholds.sample_keys,
            )
        counts.rows_read = rows_read + counts.orphans + counts.null_keys
        report = gate(
            lake, counts, thresholds, run_id=run_id, dataset=dataset, engine="spark", previous=previous
        )
        out = result.filter(~F.col(_SUP))
        # the write: Spark stages the files, the driver puts them at the run's keys
        staging_key = f"{prefix}{_STAGING}/"
        target = scratch / "out" if stage_locally else None
        path = str(target) if target is not None else _spark_path(lake, staging_key)
        files = max(1, math.ceil(rows / file_max_rows))
        if partition_by == "none":
            writable = out.select(*_required()).coalesce(files)
            writer = writable.write
        else:
            writable = out.repartition(F.col(_PART)).select(*_required(), _PART)
            writer = writable.write.partitionBy(_PART)
        writer.mode("errorifexists").option("compression", "snappy").option(
            "maxRecordsPerFile", str(file_max_rows)
        ).parquet(path)
        keys, written_bytes = _publish_files(
            lake,
            prefix,
            partition_by=partition_by,
            local=target,
            staging_key=staging_key,
            workdir=scratch,
        )
        moved = True
        if suppressed is not None:
            late = frozenset(suppressed()) - excluded
            if late and out.filter(F.col("customerNumber").isin(sorted(late))).limit(1).count():
                raise SuppressedDuringRun(
                    f"{len(late)} customer(s) suppressed while this run was writing "
                    f"(recsys forget --suppress) may be in it; nothing was published: run recsys etl again"
                )
        run = LakeRun(
            run_id=run_id,
            created_at=clock(),
            row_count=rows,
            files=keys,
            schema={f.name: str(f.type) for f in SCHEMA},
            source=shown_source,
            dataset=dataset,
            options={
                "engine": "spark",
                "update_policy": update_policy,
                "partition_by": partition_by,
                "rows_read": rows_read,
                "read_partitions": read_partitions,
                "suppressed_rows": suppressed_rows,
                "since": since.isoformat() if since is not None else None,
                "merged_into": previous.run_id if since is not None and previous is not None else None,
                "quality": report.summary() if report is not None else None,
            },
        )
        publish_run(lake, run)
    except BaseException as exc:
        if not isinstance(exc, QualityGateFailed | ConfigError | SourceSchemaError) or moved:
            with contextlib.suppress(Exception):
                lake.delete(list(lake.list(prefix)))
        if _is_spark_error(exc):
            raise SparkJobFailed(
                f"spark etl run {run_id} failed, nothing was published: {scrub(_reason(exc), source_url)}"
            ) from exc
        raise
    finally:
        for df in cached:
            with contextlib.suppress(Exception):
                df.unpersist()
        engine.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("published run %s (%d rows, %d files)", run_id, rows, len(keys))
    deleted: list[str] = []
    if retention_days is not None:
        deleted = apply_retention(lake, timedelta(days=retention_days), now=clock(), dataset=dataset)
    return EtlSummary(
        run_id=run_id,
        rows=rows,
        rows_read=rows_read,
        repeats_folded=rows_read - window_rows if dedupe else 0,
        files=len(keys),
        bytes_written=written_bytes,
        seconds=time.perf_counter() - started,
        lake=lake.uri,
        source=shown_source,
        dataset=dataset,
        update_policy=update_policy,
        partition_by=partition_by,
        deleted_runs=deleted,
        suppressed_rows=suppressed_rows,
        since=since,
        quality=report,
        engine="spark",
    )


class SparkJobFailed(InfraError):
    """A Spark job of the run failed (the JVM's reason, one line); nothing was published."""


def _is_spark_error(exc: BaseException) -> bool:
    from py4j.protocol import Py4JError  # type: ignore[import-untyped]
    from pyspark.errors import PySparkException

    return isinstance(exc, Py4JError | PySparkException)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a JVM exception (``java.sql.SQLException: ...``), on one line."""
    java = getattr(exc, "java_exception", None)
    text = str(exc)
    with contextlib.suppress(Exception):
        while java is not None and java.getCause() is not None:
            java = java.getCause()
        if java is not None:
            text = str(java.toString())
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else type(exc).__name__


def _bounds(engine: sa.engine.Engine, names: dict[str, dict[str, str]]) -> tuple[int, int] | None:
    """min and max customerNumber of ratings: the ranges of the partitioned read."""
    r = _tables(names)[0]
    column = r.c[names["ratings"]["customerNumber"]]
    with engine.connect() as conn:
        low, high = conn.execute(sa.select(sa.func.min(column), sa.func.max(column))).one()
    return None if low is None else (int(low), int(high))


def _orphan_query(names: dict[str, dict[str, str]], window: _Window | None) -> Any:
    r, p, c = _tables(names)
    R, P, C = names["ratings"], names["products"], names["customers"]
    rc, rp = r.c[R["customerNumber"]], r.c[R["productCode"]]
    pk, ck = p.c[P["productCode"]], c.c[C["customerNumber"]]
    query = (
        sa.select(rc.label("customerNumber"), rp.label("productCode"))
        .select_from(r.outerjoin(p, rp == pk).outerjoin(c, rc == ck))
        .where(sa.or_(pk.is_(None), ck.is_(None)))
    )
    if window is not None:
        query = query.where(_window_clause(names, r, window))
    return query


def _count_orphans(
    spark: SparkSession,
    opts: dict[str, str],
    *,
    orphan_sql: str,
    excluded: frozenset[int],
    counts: QualityCounts,
    sample_keys: int,
) -> None:
    """The ratings the join drops (null key, unknown product or customer), counted by Spark."""
    df = spark.read.format("jdbc").options(**opts).option("dbtable", f"({orphan_sql}) AS o").load()
    if excluded:
        df = df.filter(~F.col("customerNumber").isin(sorted(excluded)) | F.col("customerNumber").isNull())
    null_key = F.col("customerNumber").isNull() | F.col("productCode").isNull()
    df = df.withColumn("_null_key", null_key).persist()
    try:
        row = df.agg(
            F.sum(F.col("_null_key").cast("long")).alias("null_keys"),
            F.sum((~F.col("_null_key")).cast("long")).alias("orphans"),
        ).first()
        counts.null_keys = int((row["null_keys"] if row else 0) or 0)
        counts.orphans = int((row["orphans"] if row else 0) or 0)
        for check, flag in (("null_keys", True), ("orphans", False)):
            for r in df.filter(F.col("_null_key") == flag).limit(sample_keys).collect():
                counts.sample(check, [r["customerNumber"], r["productCode"]], sample_keys)
    finally:
        df.unpersist()


def _bad_rating(thresholds: Thresholds | None) -> Any:
    if thresholds is None:
        return F.lit(False)
    rating = F.col("productRating")
    outside = (rating < thresholds.rating_min) | (rating > thresholds.rating_max)
    return rating.isNull() | F.coalesce(outside, F.lit(True))


def _stats(result: DataFrame, thresholds: Thresholds | None) -> dict[str, Any]:
    kept = ~F.col(_SUP)
    row = result.agg(
        F.sum(kept.cast("long")).alias("rows"),
        F.sum(F.col(_SUP).cast("long")).alias("suppressed"),
        F.sum((~F.col(_PREV)).cast("long")).alias("window_rows"),
        F.sum((kept & _bad_rating(thresholds)).cast("long")).alias("bad"),
    ).first()
    return {k: int((row[k] if row else 0) or 0) for k in ("rows", "suppressed", "window_rows", "bad")}


def _sample_bad(result: DataFrame, thresholds: Thresholds, counts: QualityCounts) -> None:
    if not counts.bad_ratings:
        return
    bad = result.filter(~F.col(_SUP) & _bad_rating(thresholds)).limit(thresholds.sample_keys)
    for r in bad.select("customerNumber", "productCode").collect():
        counts.sample("rating_range", [r["customerNumber"], r["productCode"]], thresholds.sample_keys)


def _arrow_schema(df: DataFrame) -> list[tuple[str, str]]:
    """The columns and Arrow type names Spark will write (what the schema gate compares)."""
    return [
        (f.name, _ARROW_NAMES.get(f.dataType.simpleString(), f.dataType.simpleString()))
        for f in df.schema.fields
    ]


def _previous_rows(
    spark: SparkSession,
    lake: ObjectStore,
    *,
    previous: LakeRun,
    window_rows: DataFrame,
    mark: Callable[[DataFrame], DataFrame],
    workdir: Path | None,
) -> DataFrame:
    """The previous run's rows whose pair the window did not touch, marked like the window's.
    With a ``workdir`` (a local master) its files are downloaded there first; a cluster reads them
    from the lake."""
    if workdir is not None:
        folder = workdir / "previous"
        folder.mkdir()
        paths = []
        for index, key in enumerate(previous.files):
            local = folder / f"part-{index:05d}.parquet"
            lake.download(key, local)
            paths.append(str(local))
    else:
        paths = [_spark_path(lake, key) for key in previous.files]
    prev = _contract(spark.read.schema(_spark_schema()).parquet(*paths)).select(*COLUMNS)
    touched = window_rows.select("customerNumber", "productCode").distinct()
    kept = prev.join(touched, ["customerNumber", "productCode"], "left_anti")
    return mark(kept).withColumn(_PREV, F.lit(True))


def _spark_schema() -> T.StructType:
    return T.StructType([T.StructField(f.name, _SPARK_TYPES[str(f.type)], True) for f in SCHEMA])


def _publish_files(
    lake: ObjectStore,
    prefix: str,
    *,
    partition_by: str,
    local: Path | None,
    staging_key: str,
    workdir: Path,
) -> tuple[list[str], int]:
    """Put the staged files at the run's keys (the Python engine's names); returns the keys and the
    bytes of the files staged locally (a cluster's are not counted)."""
    counters: dict[str, int] = {}
    keys: list[str] = []
    size = 0
    if local is not None:
        for folder, path in _staged_files(local):
            key = _final_key(prefix, partition_by, folder, counters)
            lake.put_file(key, path)
            size += path.stat().st_size
            keys.append(key)
    else:
        staged = sorted(k for k in lake.list(staging_key) if k.endswith(".parquet"))
        for full in staged:
            rel = full[len(staging_key) :].split("/")
            folder = (
                unquote(rel[0].split("=", 1)[1]) if len(rel) > 1 and rel[0].startswith(f"{_PART}=") else ""
            )
            key = _final_key(prefix, partition_by, folder, counters)
            _move(lake, full, key)
            keys.append(key)
        lake.delete(list(lake.list(staging_key)))
    if not keys:  # nothing to write: a run whose one file carries the schema, as the Python engine
        key = f"{prefix}part-00000.parquet"
        lake.put_file(key, _empty_file(workdir))
        keys.append(key)
    return keys, size


# --- the Glue job's entry point ---------------------------------------------------------------------


def _secret(arn: str) -> str:
    """A Secrets Manager secret's string (the whole URL, as the ECS task definitions keep it)."""
    from infra.aws import sync_client

    value = sync_client("secretsmanager").get_secret_value(SecretId=arn)
    text = str(value.get("SecretString") or "")
    with contextlib.suppress(ValueError, TypeError, KeyError):
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return str(parsed["url"])
    return text.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark_job.py",
        description="recsys etl as a Spark job (AWS Glue 5: Spark 3.5, Python 3.11). Unknown Glue "
        "arguments (--JOB_NAME, --TempDir, ...) are ignored.",
    )
    parser.add_argument("--lake", required=True, help="s3://bucket/prefix")
    parser.add_argument("--source-url", help="the shop database URL (mysql+pymysql://...)")
    parser.add_argument("--source-url-secret", help="Secrets Manager ARN holding the shop database URL")
    parser.add_argument("--database-url-secret", help="Secrets Manager ARN of the product database URL")
    parser.add_argument("--database-url", help="the product database (its suppression list)")
    parser.add_argument("--update-policy", choices=POLICIES, default=None)
    parser.add_argument("--partition-by", choices=PARTITIONS, default=None)
    parser.add_argument("--retention-days", type=float, default=None)
    parser.add_argument("--since", default=None)
    parser.add_argument("--window", default=None)
    parser.add_argument("--etl-settings", default="{}", help="EtlSettings fields as JSON (RECSYS_ETL__*)")
    parser.add_argument(
        "--master", default=None, help="run on this master (local[2]) instead of the cluster's (Glue)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``spark_job.py --lake s3://... --source-url-secret ARN [--database-url-secret ARN] ...``: one
    run, its summary on stdout; a one-line reason on stderr and exit 2 (or 3: a failed gate)."""
    args, _glue = _parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = EtlSettings.model_validate(json.loads(args.etl_settings))
        source_url = args.source_url or (_secret(args.source_url_secret) if args.source_url_secret else None)
        if not source_url:
            raise ConfigError("give --source-url-secret (or --source-url)")
        database_url = args.database_url or (
            _secret(args.database_url_secret) if args.database_url_secret else None
        )
        suppressed = None
        if database_url:
            import asyncio

            from infra.suppression import read_suppressed

            url = database_url

            def suppressed() -> frozenset[int]:
                return asyncio.run(read_suppressed(url))

        if args.master:
            settings = settings.model_copy(update={"spark_master": args.master})
        spark = spark_session(settings, cluster=not args.master)
        summary = run_spark_etl(
            spark,
            source_url,
            args.lake,
            update_policy=args.update_policy or settings.update_policy,
            partition_by=args.partition_by or settings.partition_by,
            retention_days=args.retention_days,
            file_max_rows=settings.file_max_rows,
            rating_time_column=settings.rating_time_column,
            update_time_column=settings.update_time_column,
            since=parse_window(args.since, args.window, datetime.now(UTC)),
            thresholds=thresholds_of(settings),
            read_partitions=settings.spark_read_partitions,
            fetch_rows=settings.spark_fetch_rows,
            suppressed=suppressed,
        )
    except QualityGateFailed as exc:
        sys.stderr.write(f"spark etl: {exc}\n")
        return 3
    except (RecsysError, ValueError) as exc:
        sys.stderr.write(f"spark etl: error: {str(exc).strip().splitlines()[0]}\n")
        return 2
    sys.stdout.write(
        json.dumps({"run_id": summary.run_id, "rows": summary.rows, "files": summary.files}) + "\n"
    )
    return 0


if __name__ == "__main__":  # the Glue job's script
    sys.exit(main())
