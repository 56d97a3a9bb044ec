"""The batch ETL (the Glue job's equivalent): ``ratings JOIN products JOIN customers`` -> lake Parquet.

Bounded memory at any size: the source is read through a server-side cursor a chunk at a time
(``chunk_rows`` rows as Python objects, the costly form), each chunk is turned into compact Arrow
columns and buffered up to ``row_group_rows`` rows, written as one Parquet row group to a local
temporary file, and each finished file is uploaded and deleted before the next one grows.
Partitioned output reads the source ordered by the partition column, so only one file is open at
a time.

Publishing follows :mod:`infra.lake`: files under a run folder, then the manifest, then the
latest pointer. A crash at any point leaves the previous run published; the orphaned files are
deleted by a later run's retention pass.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.errors import ConfigError, InfraError, NotFoundError, SourceSchemaError
from etl.config import EtlSettings
from etl.gates import QualityCounts, QualityGateFailed, QualityReport, Thresholds, evaluate, report_key
from etl.policies import POLICIES, Policy, RepeatReducer
from etl.source import REQUIRED_COLUMNS, check_schema, open_source, source_errors
from infra.lake import (
    COLUMNS,
    RUNS,
    SCHEMA,
    TRAINING_DATASET,
    LakeRun,
    complete_runs,
    iter_run_batches,
    latest_run,
    manifest_key,
    new_run_id,
    parse_run_time,
    publish_run,
    run_prefix,
)
from infra.logs import get_logger
from infra.objectstore import ObjectStore, open_store
from infra.urls import redact_url

__all__ = [
    "PARTITIONS",
    "EtlSummary",
    "Partitioning",
    "SuppressedDuringRun",
    "apply_retention",
    "check_incremental",
    "gate",
    "parse_window",
    "previous_run",
    "rows_to_table",
    "run_etl",
    "thresholds_of",
    "update_column",
]

log = get_logger(__name__)

Partitioning = Literal["none", "country", "customerNumber"]
PARTITIONS: tuple[str, ...] = get_args(Partitioning)
_TIME = "_rated_at"  # the extra column read for the latest policy (not written)
_DEFAULT_GATES = Thresholds()
_CUSTOMER, _COUNTRY, _PRODUCT, _RATING = (
    COLUMNS.index(c) for c in ("customerNumber", "country", "productCode", "productRating")
)


class SuppressedDuringRun(InfraError):
    """A customer of the run was suppressed before it published; running again leaves them out."""


@dataclass(frozen=True, slots=True)
class EtlSummary:
    run_id: str
    rows: int
    rows_read: int
    repeats_folded: int
    files: int
    bytes_written: int
    seconds: float
    lake: str
    source: str
    dataset: str
    update_policy: str
    partition_by: str
    deleted_runs: list[str] = field(default_factory=list)
    suppressed_rows: int = 0  # rows of suppressed customers left out
    since: datetime | None = None  # an incremental run: ratings changed since then, merged
    quality: QualityReport | None = None  # the gates' report (None: gates off)
    engine: str = "python"

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else math.inf


def _floats(values: Sequence[Any]) -> pa.Array:
    """float64 from floats, ints or Decimals: the nearest double to each value, so DECIMAL(10,2)
    money reads back to the cent (``float(Decimal)`` rounds correctly; Arrow's decimal cast does not:
    it turns 26.15 into 26.150000000000002)."""
    try:
        return pa.array(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())


def rows_to_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Rows in :data:`COLUMNS` order (extra trailing columns ignored) as a table of :data:`SCHEMA`."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in COLUMNS]
    arrays: list[pa.Array] = []
    for index, field_ in enumerate(SCHEMA):
        values = columns[index]
        if pa.types.is_floating(field_.type):
            arrays.append(_floats(values))
        else:
            arrays.append(pa.array(values, field_.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class _PartWriter:
    """Writes row groups to a local file, rolls it per partition and size, uploads finished files."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        *,
        partition_by: Partitioning,
        workdir: Path,
        file_max_rows: int,
        row_group_rows: int,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.partition_by = partition_by
        self.workdir = workdir
        self.file_max_rows = file_max_rows
        self.row_group_rows = row_group_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.files: list[str] = []
        self.bytes_written = 0
        self._writer: pq.ParquetWriter | None = None
        self._key = ""
        self._path = workdir / "part.parquet"
        self._rows_in_file = 0
        self._partition: object = object()
        self._counters: dict[str, int] = {}
        self.schema = SCHEMA

    def _folder(self, value: object) -> str:
        if self.partition_by == "none":
            return ""
        shown = "__HIVE_DEFAULT_PARTITION__" if value is None else quote(str(value), safe="")
        return f"{self.partition_by}={shown}/"

    def _open(self, value: object) -> None:
        folder = self._folder(value)
        number = self._counters.get(folder, 0)
        self._counters[folder] = number + 1
        self._key = f"{self.prefix}{folder}part-{number:05d}.parquet"
        self._writer = pq.ParquetWriter(self._path, SCHEMA, compression="snappy")
        self._partition = value
        self._rows_in_file = 0

    def _flush(self) -> None:
        """Write the buffered rows as one row group."""
        if self._pending and self._writer is not None:
            group = pa.concat_tables(self._pending)
            self._writer.write_table(group, row_group_size=max(group.num_rows, 1))
        self._pending = []
        self._pending_rows = 0

    def close_file(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        self.bytes_written += self._path.stat().st_size
        self.store.put_file(self._key, self._path)
        self._path.unlink()
        self.files.append(self._key)
        log.debug("uploaded %s", self._key, extra={"fields": {"rows": self._rows_in_file}})

    def write(self, table: pa.Table, partition: object = None) -> None:
        offset = 0
        while offset < table.num_rows:
            if (
                self._writer is None
                or partition != self._partition
                or self._rows_in_file >= self.file_max_rows
            ):
                self.close_file()
                self._open(partition)
            assert self._writer is not None
            take = min(table.num_rows - offset, self.file_max_rows - self._rows_in_file)
            self._pending.append(table.slice(offset, take))
            self._pending_rows += take
            if self._pending_rows >= self.row_group_rows:
                self._flush()
            self._rows_in_file += take
            offset += take

    def finish(self) -> None:
        if not self.files and self._writer is None:
            self._open(None)  # an empty source still publishes a run whose file carries the schema
        self.close_file()


@dataclass(frozen=True, slots=True)
class _Window:
    """An incremental run's read: ratings changed at or after ``since`` (by ``column``)."""

    column: str
    since: datetime
    whole_pairs: bool  # a ratings log: read every row of a pair that changed, to fold it again


def _tables(names: dict[str, dict[str, str]]) -> tuple[Any, Any, Any]:
    def table(name: str, alias: str) -> Any:
        cols = names[name]
        return sa.table(
            cols["__table__"], *(sa.column(v) for k, v in cols.items() if k != "__table__")
        ).alias(alias)

    return table("ratings", "r"), table("products", "p"), table("customers", "c")


def _window_clause(names: dict[str, dict[str, str]], r: Any, window: _Window) -> Any:
    R = names["ratings"]
    since = window.since.astimezone(UTC).replace(tzinfo=None)  # sessions run in UTC (etl.source)
    if not window.whole_pairs:
        return r.c[R[window.column]] >= since
    r2 = _tables(names)[0].alias("r2")
    return sa.exists().where(
        r2.c[R["customerNumber"]] == r.c[R["customerNumber"]],
        r2.c[R["productCode"]] == r.c[R["productCode"]],
        r2.c[R[window.column]] >= since,
    )


def _query(
    names: dict[str, dict[str, str]],
    partition_by: Partitioning,
    dedupe: bool,
    time_column: str | None,
    window: _Window | None = None,
) -> sa.Select[Any]:
    r, p, c = _tables(names)
    R, P, C = names["ratings"], names["products"], names["customers"]
    source_of = {
        "customerNumber": r.c[R["customerNumber"]],
        "productCode": r.c[R["productCode"]],
        "productRating": r.c[R["productRating"]],
        **{k: c.c[C[k]] for k in ("city", "state", "postalCode", "country", "creditLimit")},
        **{k: p.c[P[k]] for k in ("productLine", "productScale", "quantityInStock", "buyPrice", "MSRP")},
    }
    selected = [source_of[name].label(name) for name in COLUMNS]
    if time_column is not None:
        selected.append(r.c[R[time_column]].label(_TIME))
    query = sa.select(*selected).select_from(
        r.join(p, r.c[R["productCode"]] == p.c[P["productCode"]]).join(
            c, r.c[R["customerNumber"]] == c.c[C["customerNumber"]]
        )
    )
    if window is not None:
        query = query.where(_window_clause(names, r, window))
    order: list[Any] = []
    if partition_by == "country":
        order.append(c.c[C["country"]])
    if partition_by != "none" or dedupe:
        order += [r.c[R["customerNumber"]], r.c[R["productCode"]]]
    if dedupe and time_column is not None:
        order.append(r.c[R[time_column]])
    return query.order_by(*order) if order else query


def parse_window(since: str | None, window: str | None, now: datetime) -> datetime | None:
    """The lower bound of an incremental run: ``--since TIMESTAMP`` (ISO-8601; without an offset it
    is UTC) or ``--window N{m,h,d,w}`` before ``now``; ``None`` for a full run. Raises ``ConfigError``."""
    if since is not None and window is not None:
        raise ConfigError("give --since or --window, not both")
    if since is not None:
        try:
            parsed = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"--since {since!r} is not an ISO-8601 timestamp (e.g. 2026-11-26T00:00:00Z)"
            ) from None
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if parsed > now:
            raise ConfigError(f"--since {since!r} is in the future")
        return parsed
    if window is not None:
        units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        text = window.strip().lower()
        try:
            amount = float(text[:-1])
            unit = units[text[-1:]]
        except (ValueError, KeyError):
            raise ConfigError(f"--window {window!r}: use a number and m, h, d or w (e.g. 1d, 12h)") from None
        if not amount > 0:
            raise ConfigError(f"--window must be positive, got {window!r}")
        return now - timedelta(**{unit: amount})
    return None


def previous_run(store: ObjectStore, dataset: str = TRAINING_DATASET) -> LakeRun | None:
    """The published run of ``dataset``, or ``None`` when there is none yet."""
    try:
        return latest_run(store, dataset)
    except NotFoundError:
        return None


def thresholds_of(settings: EtlSettings) -> Thresholds | None:
    """The gates' thresholds from the ETL settings (``None`` when the gates are off)."""
    if not settings.gates:
        return None
    return Thresholds(
        rating_min=settings.rating_min,
        rating_max=settings.rating_max,
        max_orphan_fraction=settings.max_orphan_fraction,
        min_row_fraction=settings.min_row_fraction,
        sample_keys=settings.report_sample_keys,
    )


def check_incremental(previous: LakeRun | None, partition_by: str, lake_uri: str, dataset: str) -> LakeRun:
    """An incremental run needs a previous run to merge into, written with the same partitioning."""
    if previous is None:
        raise ConfigError(
            f"--since/--window merge the changed ratings into the previous run, and {lake_uri}/{dataset} "
            "has none: run a full recsys etl first"
        )
    before = str(previous.options.get("partition_by", "none"))
    if before != partition_by:
        raise ConfigError(
            f"the previous run {previous.run_id} is partitioned by {before}: an incremental run keeps "
            f"that (--partition-by {before}), or run a full recsys etl to change it"
        )
    return previous


def gate(
    lake: ObjectStore,
    counts: QualityCounts,
    thresholds: Thresholds | None,
    *,
    run_id: str,
    dataset: str,
    engine: str,
    previous: LakeRun | None,
) -> QualityReport | None:
    """Check the run before it is published. On a failed gate: delete the run's files, write the
    report beside them (``runs/<run_id>/_quality_report.json``) and raise ``QualityGateFailed``."""
    if thresholds is None:
        return None
    report = evaluate(
        counts,
        thresholds,
        run_id=run_id,
        engine=engine,
        previous_rows=previous.row_count if previous is not None else None,
        expected_schema=[(f.name, str(f.type)) for f in SCHEMA],
    )
    log.info("quality gates", extra={"fields": report.summary()})
    if report.passed:
        return report
    lake.delete([key for key in lake.list(run_prefix(run_id, dataset))])
    key = report_key(run_id, dataset)
    lake.put_bytes(key, report.to_json())
    raise QualityGateFailed(
        f"run {run_id} failed its data-quality gates, nothing was published: {report.reason()} "
        f"(report: {lake.uri}/{key})",
        report,
        f"{lake.uri}/{key}",
    )


def run_etl(
    source_url: str,
    lake_uri: str,
    *,
    update_policy: str = "replace",
    partition_by: str = "none",
    retention_days: float | None = None,
    chunk_rows: int = 10_000,
    row_group_rows: int = 100_000,
    file_max_rows: int = 5_000_000,
    rating_time_column: str = "ratedAt",
    update_time_column: str = "updatedAt",
    since: datetime | None = None,
    thresholds: Thresholds | None = _DEFAULT_GATES,
    dataset: str = TRAINING_DATASET,
    store: ObjectStore | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    suppressed: Callable[[], Collection[int]] | None = None,
) -> EtlSummary:
    """Read the join from ``source_url``, write a new run of ``dataset`` under ``lake_uri``, publish it.

    ``suppressed`` reads the suppression list (``recsys forget --suppress``): it is read at the start,
    those customers' rows are left out, and it is read again just before publishing; a customer
    suppressed meanwhile whose rows this run wrote stops the run (``SuppressedDuringRun``, nothing
    published), so a forget racing the ETL never lets the customer back into the lake.

    ``since`` makes the run incremental: only ratings whose ``update_time_column`` is at or after it
    are read (for a ratings log without a key on the pair: every row of a pair that has such a row),
    folded by the policy, and they replace their pairs in the previous run's rows; the result is
    published as a new run. ``thresholds`` are the data-quality gates (:mod:`etl.gates`; ``None``:
    off): a run that fails one publishes nothing and raises ``QualityGateFailed``.

    Raises ``ConfigError`` (bad option or URL), ``DatabaseUnavailable``, ``SourceSchemaError``
    (naming the missing table or column), ``SuppressedDuringRun``, ``QualityGateFailed`` or an
    ``AwsError`` from the lake.
    """
    if update_policy not in POLICIES:
        raise ConfigError(f"--update-policy must be one of {', '.join(POLICIES)}, got {update_policy!r}")
    if partition_by not in PARTITIONS:
        raise ConfigError(f"--partition-by must be one of {', '.join(PARTITIONS)}, got {partition_by!r}")
    if retention_days is not None and not retention_days > 0:
        raise ConfigError(f"--retention-days must be positive, got {retention_days}")
    if min(chunk_rows, row_group_rows, file_max_rows) < 1:
        raise ConfigError("chunk_rows, row_group_rows and file_max_rows must be positive")
    policy: Policy = update_policy  # type: ignore[assignment]
    partitioning: Partitioning = partition_by  # type: ignore[assignment]
    lake = store if store is not None else open_store(lake_uri)
    started = time.perf_counter()
    run_id = new_run_id(clock())
    prefix = run_prefix(run_id, dataset)
    shown_source = redact_url(source_url)
    previous = previous_run(lake, dataset)
    if since is not None:
        previous = check_incremental(previous, partitioning, lake.uri, dataset)
    excluded = frozenset(suppressed()) if suppressed is not None else frozenset()
    written: set[int] = set()  # customers in this run, for the check before publishing
    suppressed_rows = 0
    counts = QualityCounts()
    engine = open_source(source_url)
    writer: _PartWriter | None = None
    try:
        with source_errors(source_url), tempfile.TemporaryDirectory(prefix="recsys-etl-") as tmp:
            names = check_schema(engine, REQUIRED_COLUMNS)
            pk = sa.inspect(engine).get_pk_constraint(names["ratings"]["__table__"])
            key_cols = {str(col).lower() for col in (pk or {}).get("constrained_columns") or []}
            # keyed on the pair: no repeats, every policy gives the same rows, no sort needed
            dedupe = key_cols != {"customernumber", "productcode"}
            time_column = None
            if dedupe and policy != "average":  # the time column orders a pair's rows, if present
                ratings_cols = {"ratings": (*REQUIRED_COLUMNS["ratings"], rating_time_column)}
                try:
                    names["ratings"] = check_schema(engine, ratings_cols)["ratings"]
                    time_column = rating_time_column
                except SourceSchemaError:
                    if policy == "latest":
                        raise
            window = None
            if since is not None:
                names["ratings"][update_time_column] = update_column(engine, names, update_time_column)
                window = _Window(update_time_column, since, dedupe)
            query = _query(names, partitioning, dedupe, time_column, window)
            reducer = (
                RepeatReducer(policy, (_CUSTOMER, _PRODUCT), _RATING, len(COLUMNS) if time_column else None)
                if dedupe
                else None
            )
            writer = _PartWriter(
                lake,
                prefix,
                partition_by=partitioning,
                workdir=Path(tmp),
                file_max_rows=file_max_rows,
                row_group_rows=row_group_rows,
            )
            log.info(
                "etl run %s: %s -> %s/%s",
                run_id,
                shown_source,
                lake.uri,
                prefix,
                extra={
                    "fields": {
                        "update_policy": policy,
                        "partition_by": partitioning,
                        "dedupe": dedupe,
                        "since": since.isoformat() if since else None,
                    }
                },
            )
            check = _RatingCheck(counts, thresholds)
            touched: set[str] = set()  # pairs read in the window (incremental runs)
            rows_read = rows_written = 0
            part_index = {"none": None, "country": _COUNTRY, "customerNumber": _CUSTOMER}[partitioning]
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(query)
                for chunk in itertools.chain(result.partitions(chunk_rows), [None]):
                    if chunk is None:
                        if reducer is None:
                            break
                        rows: Sequence[Sequence[Any]] = reducer.finish()
                    else:
                        rows_read += len(chunk)
                        rows = reducer.feed(chunk) if reducer is not None else chunk
                    if window is not None:
                        touched.update(_pair_key(row[_CUSTOMER], row[_PRODUCT]) for row in rows)
                    if suppressed is not None:
                        kept = [row for row in rows if row[_CUSTOMER] not in excluded]
                        suppressed_rows += len(rows) - len(kept)
                        written.update(row[_CUSTOMER] for row in kept)
                        rows = kept
                    rows_written += _write_rows(writer, rows, part_index, check)
                    log.info(
                        "etl progress",
                        extra={
                            "fields": {
                                "rows_read": rows_read,
                                "rows_written": rows_written,
                                "files": len(writer.files),
                            }
                        },
                    )
            if window is not None and previous is not None:
                merged, dropped = _merge_previous(
                    lake,
                    previous=previous,
                    writer=writer,
                    touched=touched,
                    excluded=excluded,
                    written=written,
                    check=check,
                )
                rows_written += merged
                suppressed_rows += dropped
            writer.finish()
            if thresholds is not None:
                _count_orphans(
                    engine,
                    names,
                    window=window,
                    excluded=excluded,
                    counts=counts,
                    sample_keys=thresholds.sample_keys,
                )
        counts.rows = rows_written
        counts.rows_read = rows_read + counts.orphans + counts.null_keys
        counts.written_schema = [(f.name, str(f.type)) for f in writer.schema]
        report = gate(
            lake, counts, thresholds, run_id=run_id, dataset=dataset, engine="python", previous=previous
        )
        run = LakeRun(
            run_id=run_id,
            created_at=clock(),
            row_count=rows_written,
            files=list(writer.files),
            schema={f.name: str(f.type) for f in SCHEMA},
            source=shown_source,
            dataset=dataset,
            options={
                "engine": "python",
                "update_policy": policy,
                "partition_by": partitioning,
                "rows_read": rows_read,
                "chunk_rows": chunk_rows,
                "row_group_rows": row_group_rows,
                "suppressed_rows": suppressed_rows,
                "since": since.isoformat() if since is not None else None,
                "merged_into": previous.run_id if since is not None and previous is not None else None,
                "quality": report.summary() if report is not None else None,
            },
        )
        if suppressed is not None:
            late = (frozenset(suppressed()) - excluded) & written
            if late:
                raise SuppressedDuringRun(
                    f"{len(late)} customer(s) in this run were suppressed while it was writing "
                    f"(recsys forget --suppress); nothing was published: run recsys etl again"
                )
        publish_run(lake, run)
    except BaseException as exc:
        # best effort: a failed run leaves no files behind (a killed one does; a failed gate leaves
        # its report)
        if writer is not None and not isinstance(exc, QualityGateFailed):
            with contextlib.suppress(Exception):
                lake.delete(list(lake.list(prefix)))
        raise
    finally:
        engine.dispose()
    log.info("published run %s (%d rows, %d files)", run_id, rows_written, len(run.files))
    deleted: list[str] = []
    if retention_days is not None:
        deleted = apply_retention(lake, timedelta(days=retention_days), now=clock(), dataset=dataset)
    return EtlSummary(
        run_id=run_id,
        rows=rows_written,
        rows_read=rows_read,
        repeats_folded=reducer.repeats if reducer is not None else 0,
        files=len(run.files),
        bytes_written=writer.bytes_written,
        seconds=time.perf_counter() - started,
        lake=lake.uri,
        source=shown_source,
        dataset=dataset,
        update_policy=policy,
        partition_by=partitioning,
        deleted_runs=deleted,
        suppressed_rows=suppressed_rows,
        since=since,
        quality=report,
        engine="python",
    )


def update_column(engine: Engine, names: dict[str, dict[str, str]], column: str) -> str:
    """The actual name of the ratings' last-change column; a clear error when the table lacks it."""
    try:
        return check_schema(engine, {"ratings": (*REQUIRED_COLUMNS["ratings"], column)})["ratings"][column]
    except SourceSchemaError:
        raise SourceSchemaError(
            f"the source table 'ratings' has no column {column!r}: incremental runs (--since/--window) "
            "read the ratings changed since then by their last-change time; `recsys seed` adds it to the "
            "shop tables it manages (docs/etl.md shows the DDL for others), or run without --since/--window"
        ) from None


def _pair_key(customer: Any, product: Any) -> str:
    return f"{customer}\x00{product}"


class _RatingCheck:
    """Counts output rows whose rating is null or outside the allowed range (vectorised)."""

    def __init__(self, counts: QualityCounts, thresholds: Thresholds | None) -> None:
        self.counts = counts
        self.thresholds = thresholds

    def observe(self, table: pa.Table) -> None:
        t = self.thresholds
        if t is None or table.num_rows == 0:
            return
        rating = table.column("productRating")
        outside = pc.or_kleene(pc.less(rating, t.rating_min), pc.greater(rating, t.rating_max))
        bad = pc.fill_null(pc.or_kleene(pc.is_null(rating), outside), True)
        count = int(pc.sum(bad).as_py() or 0)
        if count:
            self.counts.bad_ratings += count
            sample = table.filter(bad).slice(0, t.sample_keys)
            customers = sample.column("customerNumber").to_pylist()
            for c, p in zip(customers, sample.column("productCode").to_pylist(), strict=True):
                self.counts.sample("rating_range", [c, p], t.sample_keys)


def _merge_previous(
    lake: ObjectStore,
    *,
    previous: LakeRun,
    writer: _PartWriter,
    touched: set[str],
    excluded: frozenset[int],
    written: set[int],
    check: _RatingCheck,
) -> tuple[int, int]:
    """Write the previous run's rows whose pair the window did not touch, leaving suppressed customers
    out. Returns (rows written, rows of suppressed customers left out)."""
    kept_rows = dropped = 0
    touched_keys = pa.array(sorted(touched), pa.string())
    banned = pa.array(sorted(excluded), pa.int64())
    for batch in iter_run_batches(lake, previous, COLUMNS):
        table = pa.Table.from_batches([batch]).cast(SCHEMA)
        customers = table.column("customerNumber")
        if len(banned):
            suppressed_mask = pc.is_in(customers, value_set=banned)
            dropped += int(pc.sum(suppressed_mask).as_py() or 0)
            table = table.filter(pc.invert(suppressed_mask))
        if len(touched_keys) and table.num_rows:
            keys = pc.binary_join_element_wise(
                pc.cast(table.column("customerNumber"), pa.string()), table.column("productCode"), "\x00"
            )
            table = table.filter(pc.invert(pc.is_in(keys, value_set=touched_keys)))
        if not table.num_rows:
            continue
        written.update(pc.unique(table.column("customerNumber")).to_pylist())
        check.observe(table)
        if writer.partition_by == "none":
            writer.write(table)
        else:
            column = table.column(writer.partition_by)
            for value in pc.unique(column).to_pylist():
                mask = pc.is_null(column) if value is None else pc.fill_null(pc.equal(column, value), False)
                writer.write(table.filter(mask), value)
        kept_rows += table.num_rows
    return kept_rows, dropped


def _count_orphans(
    engine: Engine,
    names: dict[str, dict[str, str]],
    *,
    window: _Window | None,
    excluded: frozenset[int],
    counts: QualityCounts,
    sample_keys: int,
) -> None:
    """Ratings the join drops: a null key, or a product or customer the shop does not have."""
    r, p, c = _tables(names)
    R, P, C = names["ratings"], names["products"], names["customers"]
    rc, rp = r.c[R["customerNumber"]], r.c[R["productCode"]]
    pk, ck = p.c[P["productCode"]], c.c[C["customerNumber"]]
    query = (
        sa.select(rc, rp)
        .select_from(r.outerjoin(p, rp == pk).outerjoin(c, rc == ck))
        .where(sa.or_(pk.is_(None), ck.is_(None)))
    )
    if window is not None:
        query = query.where(_window_clause(names, r, window))
    with engine.connect() as conn:
        for customer, product in conn.execution_options(stream_results=True).execute(query):
            if customer is not None and customer in excluded:
                continue
            if customer is None or product is None:
                counts.null_keys += 1
                counts.sample("null_keys", [customer, product], sample_keys)
            else:
                counts.orphans += 1
                counts.sample("orphans", [customer, product], sample_keys)


def _write_rows(
    writer: _PartWriter, rows: Sequence[Sequence[Any]], part_index: int | None, check: _RatingCheck
) -> int:
    if not rows:
        return 0
    if part_index is None:
        table = rows_to_table(rows)
        check.observe(table)
        writer.write(table)
        return len(rows)
    for value, group in itertools.groupby(rows, key=lambda row: row[part_index]):
        table = rows_to_table(list(group))
        check.observe(table)
        writer.write(table, value)
    return len(rows)


def apply_retention(
    store: ObjectStore, older_than: timedelta, *, now: datetime, dataset: str = TRAINING_DATASET
) -> list[str]:
    """Delete complete runs created before ``now - older_than`` (never the latest one) and
    incomplete runs (no manifest) started before that. Returns the deleted run ids.

    A complete run's manifest goes first, so readers stop seeing it before its files disappear.
    """
    cutoff = now - older_than
    try:
        keep: str | None = latest_run(store, dataset).run_id
    except NotFoundError:
        keep = None
    complete = set(complete_runs(store, dataset))
    runs_root = f"{dataset}/{RUNS}/"
    files_by_run: dict[str, list[str]] = {}
    for key in store.list(runs_root):
        files_by_run.setdefault(key[len(runs_root) :].split("/", 1)[0], []).append(key)
    deleted: list[str] = []
    for run_id in sorted(complete | set(files_by_run)):
        started = parse_run_time(run_id)
        if run_id == keep or started is None or started >= cutoff:
            continue
        if run_id in complete:
            store.delete([manifest_key(run_id, dataset)])
        store.delete(files_by_run.get(run_id, []))
        deleted.append(run_id)
        log.info("retention: deleted run %s", run_id, extra={"fields": {"complete": run_id in complete}})
    return deleted
