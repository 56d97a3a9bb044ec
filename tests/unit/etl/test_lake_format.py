"""The lake format on a local folder: publish order, the latest pointer, schema evolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import ArtifactError, NotFoundError
from infra.lake import (
    COLUMNS,
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
    read_run,
    run_prefix,
)
from infra.objectstore import LocalStore

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _rows(n: int, offset: int = 0) -> pa.Table:
    return pa.table(
        {
            "customerNumber": pa.array([103 + i + offset for i in range(n)], pa.int64()),
            "city": ["Nantes"] * n,
            "state": pa.array([None] * n, pa.string()),
            "postalCode": ["44000"] * n,
            "country": ["France"] * n,
            "creditLimit": pa.array([21000.55] * n, pa.float64()),
            "productCode": [f"S10_{1000 + i}" for i in range(n)],
            "productLine": ["Motorcycles"] * n,
            "productScale": ["1:10"] * n,
            "quantityInStock": pa.array([7933] * n, pa.int64()),
            "buyPrice": pa.array([48.81] * n, pa.float64()),
            "MSRP": pa.array([95.7] * n, pa.float64()),
            "productRating": pa.array([float(1 + i % 5) for i in range(n)], pa.float64()),
        },
        schema=SCHEMA,
    )


def _write_run(store: LocalStore, table: pa.Table, when: datetime, *, publish: bool = True) -> LakeRun:
    run_id = new_run_id(when)
    key = run_prefix(run_id) + "part-00000.parquet"
    path = Path(store.uri) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
    run = LakeRun(
        run_id=run_id,
        created_at=when,
        row_count=table.num_rows,
        files=[key],
        schema={f.name: str(f.type) for f in table.schema},
        source="mysql+pymysql://root:***@db/shop",
    )
    if publish:
        publish_run(store, run)
    return run


def test_run_ids_sort_by_time_and_parse_back() -> None:
    early, late = new_run_id(T0), new_run_id(T0 + timedelta(microseconds=1))
    assert early < late
    assert parse_run_time(early) == T0
    assert parse_run_time("not-a-run") is None


def test_no_run_is_a_clear_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="run `recsys etl` first"):
        latest_run(LocalStore(str(tmp_path)))


def test_latest_follows_the_pointer_and_reads_every_row(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    first = _write_run(store, _rows(3), T0)
    second = _write_run(store, _rows(5, offset=10), T0 + timedelta(hours=1))
    got = latest_run(store)
    assert got.run_id == second.run_id and got.row_count == 5
    table = read_run(store, got)
    assert table.column_names == list(COLUMNS)
    assert table.column("customerNumber").to_pylist() == [113, 114, 115, 116, 117]
    assert table.column("creditLimit").to_pylist() == [21000.55] * 5
    assert complete_runs(store) == [first.run_id, second.run_id]


def test_a_run_without_manifest_is_invisible(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    done = _write_run(store, _rows(2), T0)
    _write_run(store, _rows(9), T0 + timedelta(hours=1), publish=False)  # crashed before its manifest
    assert latest_run(store).run_id == done.run_id
    assert read_run(store, latest_run(store)).num_rows == 2


def test_pointer_never_moves_back_and_missing_pointer_falls_back(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    newer = _write_run(store, _rows(2), T0 + timedelta(hours=2))
    _write_run(store, _rows(4), T0)  # an older run finishing late
    assert latest_run(store).run_id == newer.run_id
    store.delete([f"{TRAINING_DATASET}/_latest.json"])
    assert latest_run(store).run_id == newer.run_id


def test_added_columns_read_as_nulls_from_older_runs(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    old = _rows(2).drop_columns(["MSRP"])
    run = _write_run(store, old, T0)
    table = read_run(store, run)
    assert table.column("MSRP").to_pylist() == [None, None]
    assert table.schema.field("MSRP").type == pa.float64()
    batches = list(iter_run_batches(store, run, columns=("productCode", "MSRP"), batch_rows=1))
    assert [b.num_rows for b in batches] == [1, 1]
    assert batches[0].schema.names == ["productCode", "MSRP"]


def test_a_damaged_manifest_is_an_artifact_error(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    run = _write_run(store, _rows(1), T0)
    store.put_bytes(manifest_key(run.run_id), b"{not json")
    with pytest.raises(ArtifactError, match="not a valid run manifest"):
        latest_run(store)


def test_manifest_round_trips(tmp_path: Path) -> None:
    run = LakeRun("r", T0, 1, ["a"], {"x": "int64"}, "src", options={"partition_by": "none"})
    assert LakeRun.from_json(run.to_json(), "here") == run
