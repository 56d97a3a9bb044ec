"""The ETL's own logic on a SQLite source and a local lake: policies, partitioning, retention, errors.

The real databases (MariaDB, PostgreSQL) and S3 are in tests/integration/etl; SQLite runs the same
SQLAlchemy Core query in milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.errors import AwsError, SourceSchemaError
from etl.gates import Thresholds
from etl.pipeline import apply_retention, run_etl
from infra.lake import complete_runs, latest_run, new_run_id, read_run, run_prefix
from infra.objectstore import LocalStore

from .conftest import create_shop_tables

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _source(path: Path, ratings: list[tuple[int, str, int, int | None]], *, keyed: bool) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    key = ", PRIMARY KEY (customerNumber, productCode)" if keyed else ""
    with engine.begin() as conn:
        create_shop_tables(conn, f", ratedAt INTEGER{key}")
        conn.exec_driver_sql(
            "INSERT INTO customers VALUES (103, 'Nantes', NULL, '44000', 'France', 21000.55), "
            "(112, 'Las Vegas', 'NV', '83030', 'USA', 71800), "
            "(114, 'Melbourne', 'Victoria', NULL, 'Australia', NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO products VALUES ('S10_1678', 'Motorcycles', '1:10', 7933, 48.81, 95.70), "
            "('S18_2238', 'Classic Cars', '1:18', 2, 101.51, 163.73)"
        )
        for row in ratings:
            conn.execute(
                sa.text("INSERT INTO ratings VALUES (:c, :p, :r, :t)"), dict(zip("cprt", row, strict=True))
            )
    engine.dispose()
    return url


UNIQUE = [(103, "S10_1678", 4, 1), (103, "S18_2238", 2, 1), (112, "S10_1678", 5, 1), (114, "S18_2238", 3, 1)]
REPEATED = [*UNIQUE, (103, "S10_1678", 1, 0), (103, "S10_1678", 2, 7), (999, "S10_1678", 5, 1)]


def test_rows_types_and_money_survive(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    summary = run_etl(url, str(tmp_path / "lake"), chunk_rows=1, row_group_rows=3)
    store = LocalStore(str(tmp_path / "lake"))
    run = latest_run(store)
    assert run.run_id == summary.run_id and run.row_count == 4 == summary.rows
    rows = sorted(read_run(store, run).to_pylist(), key=lambda r: (r["customerNumber"], r["productCode"]))
    assert rows[0] == {
        "customerNumber": 103,
        "city": "Nantes",
        "state": None,
        "postalCode": "44000",
        "country": "France",
        "creditLimit": 21000.55,
        "productCode": "S10_1678",
        "productLine": "Motorcycles",
        "productScale": "1:10",
        "quantityInStock": 7933,
        "buyPrice": 48.81,
        "MSRP": 95.7,
        "productRating": 4.0,
    }
    assert rows[-1]["creditLimit"] is None and rows[-1]["postalCode"] is None
    parquet = pq.ParquetFile(Path(store.uri) / run.files[0])
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
    assert groups == [3, 1]  # chunks of one row buffered into row groups of three
    assert parquet.metadata.row_group(0).column(0).compression == "SNAPPY"
    assert run.options["update_policy"] == "replace" and "password" not in run.source


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("replace", 2.0), ("latest", 2.0), ("average", (4 + 1 + 2) / 3)],
)
def test_repeated_ratings_follow_the_policy(tmp_path: Path, policy: str, expected: float) -> None:
    url = _source(tmp_path / "shop.db", REPEATED, keyed=False)
    # REPEATED has one rating of an unknown customer: the gate allows it here (default: none)
    allow = Thresholds(max_orphan_fraction=0.2)
    summary = run_etl(url, str(tmp_path / "lake"), update_policy=policy, chunk_rows=1, thresholds=allow)
    assert summary.rows_read == 6 and summary.rows == 4 and summary.repeats_folded == 2
    table = read_run(LocalStore(str(tmp_path / "lake")), latest_run(LocalStore(str(tmp_path / "lake"))))
    got = {(r["customerNumber"], r["productCode"]): r["productRating"] for r in table.to_pylist()}
    assert got[(103, "S10_1678")] == pytest.approx(expected)
    assert (999, "S10_1678") not in got  # a rating of an unknown customer does not join


def test_latest_needs_a_time_column_only_when_pairs_can_repeat(tmp_path: Path) -> None:
    keyed = _source(tmp_path / "keyed.db", UNIQUE, keyed=True)
    assert run_etl(keyed, str(tmp_path / "a"), update_policy="latest", rating_time_column="ratedOn").rows == 4
    log = _source(tmp_path / "log.db", REPEATED, keyed=False)
    with pytest.raises(SourceSchemaError, match=r"ratings.*'ratedOn'"):
        run_etl(log, str(tmp_path / "b"), update_policy="latest", rating_time_column="ratedOn")


def test_partition_by_customer_writes_a_self_contained_file_per_customer(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    summary = run_etl(url, str(tmp_path / "lake"), partition_by="customerNumber", chunk_rows=3)
    run = latest_run(LocalStore(str(tmp_path / "lake")))
    assert summary.files == 3
    assert sorted(f.split("/")[3] for f in run.files) == [
        "customerNumber=103",
        "customerNumber=112",
        "customerNumber=114",
    ]
    for key in run.files:
        number = int(key.split("/")[3].split("=")[1])
        table = pq.read_table(Path(tmp_path / "lake") / key)
        assert set(table.column("customerNumber").to_pylist()) == {number}


def test_files_roll_over_at_the_size_limit(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    summary = run_etl(url, str(tmp_path / "lake"), chunk_rows=3, file_max_rows=2)
    run = latest_run(LocalStore(str(tmp_path / "lake")))
    assert summary.files == 2 and [k.rsplit("/", 1)[1] for k in run.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert read_run(LocalStore(str(tmp_path / "lake")), run).num_rows == 4


def test_an_empty_source_publishes_an_empty_run_with_the_schema(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", [], keyed=True)
    run_etl(url, str(tmp_path / "lake"))
    table = read_run(LocalStore(str(tmp_path / "lake")), latest_run(LocalStore(str(tmp_path / "lake"))))
    assert table.num_rows == 0 and "creditLimit" in table.column_names


def test_retention_deletes_old_runs_and_orphans_but_never_the_latest(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    lake = tmp_path / "lake"
    store = LocalStore(str(lake))
    old = run_etl(url, str(lake), clock=lambda: NOW - timedelta(days=10)).run_id
    old_orphan = new_run_id(NOW - timedelta(days=9))
    store.put_bytes(run_prefix(old_orphan) + "part-00000.parquet", b"half")
    fresh_orphan = new_run_id(NOW - timedelta(hours=1))
    store.put_bytes(run_prefix(fresh_orphan) + "part-00000.parquet", b"running")
    summary = run_etl(url, str(lake), retention_days=3, clock=lambda: NOW)
    assert sorted(summary.deleted_runs) == sorted([old, old_orphan])
    assert complete_runs(store) == [summary.run_id]
    assert not list(store.list(run_prefix(old))) and not list(store.list(run_prefix(old_orphan)))
    assert list(store.list(run_prefix(fresh_orphan)))  # may still be running: kept
    # the only run left is the latest: a retention of zero age keeps it anyway
    assert apply_retention(store, timedelta(0), now=NOW + timedelta(days=365)) == [fresh_orphan]
    assert latest_run(store).run_id == summary.run_id


class _FailingStore(LocalStore):
    """Fails the second upload, like a network error mid-run."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.uploads = 0

    def put_file(self, key: str, path: Path) -> None:
        self.uploads += 1
        if self.uploads == 2:
            raise AwsError("uploading: connection reset")
        super().put_file(key, path)


def test_a_failed_run_leaves_the_previous_one_published_and_no_files(tmp_path: Path) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    lake = str(tmp_path / "lake")
    before = run_etl(url, lake).run_id
    failing = _FailingStore(lake)
    with pytest.raises(AwsError):
        run_etl(url, lake, store=failing, partition_by="customerNumber")
    assert failing.uploads == 2
    assert latest_run(LocalStore(lake)).run_id == before
    assert [k.split("/")[2] for k in LocalStore(lake).list("ratings_ml_training/runs/")] == [before]


def test_decimal_money_becomes_the_nearest_double() -> None:
    """Arrow's decimal cast gives 26.150000000000002 for 26.15; the ETL must not."""
    from decimal import Decimal

    from etl.pipeline import rows_to_table

    row = (103, "Nantes", None, None, "France", Decimal("26.15"), "S10_1678", "Motorcycles", "1:10", 5)
    table = rows_to_table([(*row, Decimal("0.10"), Decimal("95.70"), 4), (*row, None, Decimal("1.1"), 2.5)])
    assert table.column("buyPrice").to_pylist() == [0.1, None]
    assert table.column("creditLimit").to_pylist() == [26.15, 26.15]
    assert table.column("MSRP").to_pylist() == [95.7, 1.1]
    assert table.column("productRating").to_pylist() == [4.0, 2.5]


@pytest.mark.parametrize("partition_by", ["none", "customerNumber"])
def test_suppressed_customers_are_left_out(tmp_path: Path, partition_by: str) -> None:
    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    lake = str(tmp_path / "lake")
    summary = run_etl(url, lake, partition_by=partition_by, suppressed=lambda: {103, 555})
    store = LocalStore(lake)
    run = latest_run(store)
    assert sorted(read_run(store, run).column("customerNumber").to_pylist()) == [112, 114]
    assert (summary.rows, summary.rows_read, summary.suppressed_rows) == (2, 4, 2)
    assert run.options["suppressed_rows"] == 2
    assert not any("customerNumber=103/" in key for key in store.list(""))  # no file of theirs either
    if partition_by == "customerNumber":
        assert any("customerNumber=112/" in key for key in store.list(""))


def test_a_customer_suppressed_during_the_run_stops_the_publish(tmp_path: Path) -> None:
    from etl.pipeline import SuppressedDuringRun

    url = _source(tmp_path / "shop.db", UNIQUE, keyed=True)
    lake = str(tmp_path / "lake")
    before = run_etl(url, lake).run_id
    reads = iter([frozenset(), frozenset({112})])  # forget --suppress 112 lands while the run writes
    with pytest.raises(SuppressedDuringRun, match="1 customer"):
        run_etl(url, lake, suppressed=lambda: next(reads))
    store = LocalStore(lake)
    assert latest_run(store).run_id == before
    assert [k.split("/")[2] for k in store.list("ratings_ml_training/runs/")] == [before]
    # a customer suppressed meanwhile who is not in the run does not stop it
    reads = iter([frozenset(), frozenset({4242})])
    assert run_etl(url, lake, suppressed=lambda: next(reads)).rows == 4
