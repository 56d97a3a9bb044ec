"""The data lake's format: runs of Parquet files published atomically, and the readers.

Layout under the lake URI (``s3://bucket/prefix`` or a local folder)::

    <dataset>/runs/<run_id>/part-00000.parquet            partition_by = none
    <dataset>/runs/<run_id>/country=France/part-00000.parquet   partition_by = country
    <dataset>/_manifests/<run_id>.json                    written after every file of the run
    <dataset>/_latest.json                                {"run_id": ...}: the published run

A run is **complete** once its manifest exists; a run without a manifest (a crashed or running job)
is invisible to readers. Publishing is three atomic object writes in order: the files, the manifest,
the pointer. Readers follow the pointer (or, without one, the newest manifest), so they see the
previous complete run or the new one, never half of one.

Run ids sort by time: ``20261126T054617123456Z-1a2b3c``. Every file carries all the columns (the
partition column too), so each file reads on its own. Schema evolution: columns are only ever
added, added columns are nullable, and readers select columns by name (a column an older run lacks
reads as nulls).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import ArtifactError, NotFoundError
from infra.objectstore import ObjectStore

__all__ = [
    "COLUMNS",
    "LATEST_POINTER",
    "MANIFESTS",
    "RUNS",
    "SCHEMA",
    "TRAINING_DATASET",
    "LakeRun",
    "complete_runs",
    "iter_run_batches",
    "latest_run",
    "manifest_key",
    "new_run_id",
    "parse_run_time",
    "publish_run",
    "read_run",
    "run_prefix",
]

TRAINING_DATASET = "ratings_ml_training"
RUNS = "runs"
MANIFESTS = "_manifests"
LATEST_POINTER = "_latest.json"
FORMAT_VERSION = 1

# The training data's columns, in order (DESIGN.md). Money is float64: exact to the cent for the
# source's DECIMAL(10,2) values, never truncated. state and postalCode are nullable in the source.
SCHEMA = pa.schema(
    [
        pa.field("customerNumber", pa.int64(), nullable=False),
        pa.field("city", pa.string()),
        pa.field("state", pa.string()),
        pa.field("postalCode", pa.string()),
        pa.field("country", pa.string()),
        pa.field("creditLimit", pa.float64()),
        pa.field("productCode", pa.string(), nullable=False),
        pa.field("productLine", pa.string()),
        pa.field("productScale", pa.string()),
        pa.field("quantityInStock", pa.int64()),
        pa.field("buyPrice", pa.float64()),
        pa.field("MSRP", pa.float64()),
        pa.field("productRating", pa.float64(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


@dataclass(frozen=True, slots=True)
class LakeRun:
    """One complete run of a dataset, as its manifest describes it.

    ``files`` are keys relative to the lake root; ``schema`` maps column name to Arrow type name.
    """

    run_id: str
    created_at: datetime
    row_count: int
    files: list[str]
    schema: dict[str, str]
    source: str
    dataset: str = TRAINING_DATASET
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        payload = asdict(self)
        payload["created_at"] = self.created_at.isoformat()
        payload["format_version"] = FORMAT_VERSION
        return json.dumps(payload, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> LakeRun:
        try:
            raw = json.loads(data)
            return cls(
                run_id=str(raw["run_id"]),
                created_at=datetime.fromisoformat(raw["created_at"]),
                row_count=int(raw["row_count"]),
                files=[str(f) for f in raw["files"]],
                schema={str(k): str(v) for k, v in raw["schema"].items()},
                source=str(raw.get("source", "")),
                dataset=str(raw.get("dataset", TRAINING_DATASET)),
                options=dict(raw.get("options", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{where} is not a valid run manifest: {exc}") from exc


# --- keys ------------------------------------------------------------------------------------------


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """A run id that sorts by creation time (UTC, microseconds) plus a random tail."""
    import secrets

    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{when:%Y%m%dT%H%M%S%f}Z-{suffix or secrets.token_hex(3)}"


def parse_run_time(run_id: str) -> datetime | None:
    """When the run started, from its id; ``None`` for a name that is not a run id."""
    try:
        return datetime.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def run_prefix(run_id: str, dataset: str = TRAINING_DATASET) -> str:
    return f"{dataset}/{RUNS}/{run_id}/"


def manifest_key(run_id: str, dataset: str = TRAINING_DATASET) -> str:
    return f"{dataset}/{MANIFESTS}/{run_id}.json"


# --- publishing ------------------------------------------------------------------------------------


def publish_run(store: ObjectStore, run: LakeRun) -> None:
    """Make ``run`` complete and current: its manifest, then the latest pointer.

    Every file of the run must already be written. The pointer only moves forward: a run older
    than the one already published is made complete but does not become the latest.
    """
    store.put_bytes(manifest_key(run.run_id, run.dataset), run.to_json())
    current = _read_pointer(store, run.dataset)
    if current is None or current <= run.run_id:
        pointer = {"run_id": run.run_id, "manifest": manifest_key(run.run_id, run.dataset)}
        store.put_bytes(f"{run.dataset}/{LATEST_POINTER}", json.dumps(pointer).encode())


def _read_pointer(store: ObjectStore, dataset: str) -> str | None:
    try:
        raw = json.loads(store.get_bytes(f"{dataset}/{LATEST_POINTER}"))
        return str(raw["run_id"])
    except NotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a damaged pointer: fall back to the manifests


# --- reading ---------------------------------------------------------------------------------------


def _load_manifest(store: ObjectStore, run_id: str, dataset: str) -> LakeRun:
    key = manifest_key(run_id, dataset)
    return LakeRun.from_json(store.get_bytes(key), f"{store.uri}/{key}")


def complete_runs(store: ObjectStore, dataset: str = TRAINING_DATASET) -> list[str]:
    """Ids of the complete runs (those with a manifest), oldest first."""
    prefix = f"{dataset}/{MANIFESTS}/"
    ids = [k[len(prefix) : -len(".json")] for k in store.list(prefix) if k.endswith(".json")]
    return sorted(ids)


def latest_run(store: ObjectStore, dataset: str = TRAINING_DATASET) -> LakeRun:
    """The published run: the one the pointer names, else the newest complete run.

    Raises ``NotFoundError`` when the dataset has no complete run.
    """
    pointed = _read_pointer(store, dataset)
    if pointed is not None:
        try:
            return _load_manifest(store, pointed, dataset)
        except NotFoundError:
            pass  # the pointer outlived its run: use the manifests
    runs = complete_runs(store, dataset)
    if not runs:
        raise NotFoundError(f"no complete run under {store.uri}/{dataset}; run `recsys etl` first")
    return _load_manifest(store, runs[-1], dataset)


def _project(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Select ``columns`` by name; a column the file lacks (an older run) reads as nulls."""
    arrays = []
    for name in columns:
        if name in table.column_names:
            arrays.append(table.column(name))
        else:
            kind = SCHEMA.field(name).type if name in SCHEMA.names else pa.null()
            arrays.append(pa.nulls(table.num_rows, type=kind))
    return pa.Table.from_arrays(arrays, names=list(columns))


def iter_run_batches(
    store: ObjectStore, run: LakeRun, columns: Sequence[str] = COLUMNS, batch_rows: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """The run's rows as record batches, one file at a time (memory bounded by one row group)."""
    with tempfile.TemporaryDirectory(prefix="recsys-lake-") as tmp:
        local = Path(tmp) / "part.parquet"
        for key in run.files:
            store.download(key, local)
            parquet = pq.ParquetFile(local)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
                yield from _project(pa.Table.from_batches([batch]), columns).to_batches()
            parquet.close()


def read_run(store: ObjectStore, run: LakeRun, columns: Sequence[str] = COLUMNS) -> pa.Table:
    """Every row of ``run`` as one table with ``columns`` (default: the training columns)."""
    tables: list[pa.Table] = []
    with tempfile.TemporaryDirectory(prefix="recsys-lake-") as tmp:
        for index, key in enumerate(run.files):
            local = Path(tmp) / f"part-{index}.parquet"
            store.download(key, local)
            tables.append(_project(pq.read_table(local), columns))
    if not tables:
        schema = pa.schema(
            [SCHEMA.field(c) if c in SCHEMA.names else pa.field(c, pa.null()) for c in columns]
        )
        return schema.empty_table()
    return pa.concat_tables(tables)
