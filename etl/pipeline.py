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
import pyarrow.parquet as pq
import sqlalchemy as sa

from core.errors import ConfigError, InfraError, NotFoundError, SourceSchemaError
from etl.policies import POLICIES, Policy, RepeatReducer
from etl.source import REQUIRED_COLUMNS, check_schema, open_source, source_errors
from infra.lake import (
    COLUMNS,
    RUNS,
    SCHEMA,
    TRAINING_DATASET,
    LakeRun,
    complete_runs,
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
    "rows_to_table",
    "run_etl",
]

log = get_logger(__name__)

Partitioning = Literal["none", "country", "customerNumber"]
PARTITIONS: tuple[str, ...] = get_args(Partitioning)
_TIME = "_rated_at"  # the extra column read for the latest policy (not written)
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


def _query(
    names: dict[str, dict[str, str]], partition_by: Partitioning, dedupe: bool, time_column: str | None
) -> sa.Select[Any]:
    def table(name: str, alias: str) -> Any:
        cols = names[name]
        return sa.table(
            cols["__table__"], *(sa.column(v) for k, v in cols.items() if k != "__table__")
        ).alias(alias)

    r, p, c = table("ratings", "r"), table("products", "p"), table("customers", "c")
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
    order: list[Any] = []
    if partition_by == "country":
        order.append(c.c[C["country"]])
    if partition_by != "none" or dedupe:
        order += [r.c[R["customerNumber"]], r.c[R["productCode"]]]
    if dedupe and time_column is not None:
        order.append(r.c[R[time_column]])
    return query.order_by(*order) if order else query


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

    Raises ``ConfigError`` (bad option or URL), ``DatabaseUnavailable``, ``SourceSchemaError``
    (naming the missing table or column), ``SuppressedDuringRun`` or an ``AwsError`` from the lake.
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
    excluded = frozenset(suppressed()) if suppressed is not None else frozenset()
    written: set[int] = set()  # customers in this run, for the check before publishing
    suppressed_rows = 0
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
            query = _query(names, partitioning, dedupe, time_column)
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
                extra={"fields": {"update_policy": policy, "partition_by": partitioning, "dedupe": dedupe}},
            )
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
                    if suppressed is not None:
                        kept = [row for row in rows if row[_CUSTOMER] not in excluded]
                        suppressed_rows += len(rows) - len(kept)
                        written.update(row[_CUSTOMER] for row in kept)
                        rows = kept
                    rows_written += _write_rows(writer, rows, part_index)
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
            writer.finish()
        run = LakeRun(
            run_id=run_id,
            created_at=clock(),
            row_count=rows_written,
            files=list(writer.files),
            schema={f.name: str(f.type) for f in SCHEMA},
            source=shown_source,
            dataset=dataset,
            options={
                "update_policy": policy,
                "partition_by": partitioning,
                "rows_read": rows_read,
                "chunk_rows": chunk_rows,
                "row_group_rows": row_group_rows,
                "suppressed_rows": suppressed_rows,
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
    except BaseException:
        if writer is not None:  # best effort: a failed run leaves no files behind (a killed one does)
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
    )


def _write_rows(writer: _PartWriter, rows: Sequence[Sequence[Any]], part_index: int | None) -> int:
    if not rows:
        return 0
    if part_index is None:
        writer.write(rows_to_table(rows))
        return len(rows)
    for value, group in itertools.groupby(rows, key=lambda row: row[part_index]):
        writer.write(rows_to_table(list(group)), value)
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
