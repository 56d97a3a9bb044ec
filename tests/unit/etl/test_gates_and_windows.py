"""Data-quality gates and incremental runs of the Python engine, on a SQLite source and a local lake.

(The Spark engine runs the same checks against MariaDB in tests/integration/etl/test_etl_spark.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.errors import ConfigError, SourceSchemaError
from etl.gates import QualityCounts, QualityGateFailed, Thresholds, evaluate
from etl.pipeline import parse_window, run_etl
from infra.lake import SCHEMA, latest_run, read_run
from infra.objectstore import LocalStore
from recsys.cli import main as cli

from .conftest import create_shop_tables

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CONTRACT = [(f.name, str(f.type)) for f in SCHEMA]


def _shop(path: Path, *, updated: bool = True) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    stamp = ", updatedAt TEXT" if updated else ""
    with engine.begin() as conn:
        create_shop_tables(conn, f"{stamp}, PRIMARY KEY (customerNumber, productCode)")
        conn.exec_driver_sql(
            "INSERT INTO customers VALUES (103, 'Nantes', NULL, '44000', 'France', 21000.55), "
            "(112, 'Las Vegas', 'NV', '83030', 'USA', 71800), "
            "(114, 'Melbourne', NULL, NULL, 'Australia', NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO products VALUES ('S10_1678', 'Motorcycles', '1:10', 7933, 48.81, 95.70), "
            "('S18_2238', 'Classic Cars', '1:18', 2, 101.51, 163.73)"
        )
        ratings = [(103, "S10_1678", 4), (103, "S18_2238", 2), (112, "S10_1678", 5), (114, "S18_2238", 3)]
        for c, p, r in ratings:
            values = {"c": c, "p": p, "r": r, "t": "2026-01-01 00:00:00"}
            columns = "(:c, :p, :r, :t)" if updated else "(:c, :p, :r)"
            conn.execute(sa.text(f"INSERT INTO ratings VALUES {columns}"), values)
    engine.dispose()
    return url


def _sql(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _pairs(lake: str) -> dict[tuple[int, str], float]:
    store = LocalStore(lake)
    rows = read_run(store, latest_run(store)).to_pylist()
    return {(r["customerNumber"], r["productCode"]): r["productRating"] for r in rows}


def test_evaluate_reports_every_check_with_its_count_and_limit() -> None:
    counts = QualityCounts(rows=90, rows_read=100, bad_ratings=2, orphans=3, written_schema=CONTRACT)
    counts.sample("rating_range", [103, "S10_1678"], 10)
    report = evaluate(
        counts,
        Thresholds(max_orphan_fraction=0.05, min_row_fraction=0.5),
        run_id="r",
        engine="python",
        previous_rows=150,
        expected_schema=CONTRACT,
    )
    checks = {c.name: c for c in report.checks}
    assert not report.passed and [c.name for c in report.failed] == ["rating_range"]
    assert checks["orphans"].passed and checks["orphans"].limit.startswith("at most 5")
    assert checks["row_count"].passed and checks["schema"].passed
    assert checks["rating_range"].sample_keys == [[103, "S10_1678"]]
    assert report.reason() == "rating_range: 2 rating(s) null or outside [1, 5]"
    # the row count against the previous run, and a schema that drifted
    counts = QualityCounts(rows=40, rows_read=40, written_schema=[*CONTRACT[:-1], ("productRating", "int64")])
    report = evaluate(
        counts, Thresholds(), run_id="r", engine="spark", previous_rows=100, expected_schema=CONTRACT
    )
    assert [c.name for c in report.failed] == ["row_count", "schema"]
    assert "40 rows, below 0.5 x the previous run's 100" in report.reason()
    assert "productRating is int64, expected double" in report.reason()
    assert json.loads(report.to_json())["passed"] is False


def test_a_run_that_shrinks_below_the_floor_publishes_nothing_and_leaves_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _shop(tmp_path / "shop.db")
    lake = str(tmp_path / "lake")
    first = run_etl(url, lake)
    assert first.quality is not None and first.quality.passed
    assert latest_run(LocalStore(lake)).options["quality"]["row_count"] == 4
    _sql(url, "DELETE FROM ratings WHERE customerNumber <> 103")  # half the rows are gone
    assert run_etl(url, lake, thresholds=Thresholds(min_row_fraction=0.5)).rows == 2  # 2 >= 0.5 x 4
    _sql(url, "DELETE FROM ratings WHERE productCode = 'S18_2238'")
    with pytest.raises(QualityGateFailed, match=r"row_count: 1 rows, below 0.6 x the previous run's 2"):
        run_etl(url, lake, thresholds=Thresholds(min_row_fraction=0.6))
    # the command: one line, exit 3, nothing published, the report beside the failed run
    before = latest_run(LocalStore(lake)).run_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_ETL__MIN_ROW_FRACTION", "0.6")
        assert cli(["etl", "--source-url", url, "--lake", lake, "--log-level", "ERROR"]) == 3
    # the command's own lines (a logging handler another test left on a closed stream may add noise)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recsys etl")]
    assert len(err) == 1 and "failed its data-quality gates, nothing was published: row_count" in err[0]
    report_path = err[0].rsplit("(report: ", 1)[1].rstrip(")")
    report = json.loads(Path(report_path).read_text())
    assert report["counts"]["rows"] == 1 and not report["passed"]
    assert [p.name for p in Path(report_path).parent.iterdir()] == ["_quality_report.json"]
    assert latest_run(LocalStore(lake)).run_id == before
    # the floor is a setting
    env = {"RECSYS_ETL__MIN_ROW_FRACTION": "0.4"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert cli(["etl", "--source-url", url, "--lake", lake, "--log-level", "ERROR"]) == 0


def test_an_incremental_run_reads_the_window_and_merges_it_into_the_previous_run(tmp_path: Path) -> None:
    url = _shop(tmp_path / "shop.db")
    lake = str(tmp_path / "lake")
    run_etl(url, lake, clock=lambda: NOW)
    _sql(
        url,
        "UPDATE ratings SET productRating = 1, updatedAt = '2026-05-31 18:00:00' "
        "WHERE customerNumber = 103 AND productCode = 'S10_1678'",
        "INSERT INTO ratings VALUES (112, 'S18_2238', 2, '2026-05-31 20:00:00')",
    )
    since = parse_window(None, "1d", NOW)
    summary = run_etl(url, lake, since=since, clock=lambda: NOW + timedelta(seconds=1))
    assert summary.rows_read == 2 and summary.rows == 5 and summary.since == NOW - timedelta(days=1)
    assert _pairs(lake) == {
        (103, "S10_1678"): 1.0,
        (103, "S18_2238"): 2.0,
        (112, "S10_1678"): 5.0,
        (112, "S18_2238"): 2.0,
        (114, "S18_2238"): 3.0,
    }
    options = latest_run(LocalStore(lake)).options
    assert options["since"] == "2026-05-31T12:00:00+00:00" and options["merged_into"]
    # a suppressed customer leaves the merged run too
    later = NOW + timedelta(seconds=2)
    merged = run_etl(url, lake, since=since, suppressed=lambda: {114}, clock=lambda: later)
    assert merged.suppressed_rows == 1 and (114, "S18_2238") not in _pairs(lake)


def test_incremental_runs_say_what_they_need(tmp_path: Path) -> None:
    url = _shop(tmp_path / "shop.db")
    with pytest.raises(ConfigError, match="has none: run a full recsys etl first"):
        run_etl(url, str(tmp_path / "empty"), since=NOW)
    run_etl(url, str(tmp_path / "lake"))
    with pytest.raises(ConfigError, match=r"partitioned by none: an incremental run keeps that"):
        run_etl(url, str(tmp_path / "lake"), since=NOW, partition_by="country")
    old = _shop(tmp_path / "old.db", updated=False)
    run_etl(old, str(tmp_path / "old"))
    with pytest.raises(SourceSchemaError, match=r"has no column 'updatedAt': incremental runs"):
        run_etl(old, str(tmp_path / "old"), since=NOW)


@pytest.mark.parametrize(
    ("since", "window", "expected"),
    [
        ("2026-05-30T10:00:00Z", None, datetime(2026, 5, 30, 10, tzinfo=UTC)),
        ("2026-05-30T12:00:00+02:00", None, datetime(2026, 5, 30, 10, tzinfo=UTC)),
        ("2026-05-30 10:00", None, datetime(2026, 5, 30, 10, tzinfo=UTC)),
        (None, "2d", NOW - timedelta(days=2)),
        (None, "12h", NOW - timedelta(hours=12)),
        (None, "1w", NOW - timedelta(weeks=1)),
        (None, None, None),
    ],
)
def test_parse_window(since: str | None, window: str | None, expected: datetime | None) -> None:
    assert parse_window(since, window, NOW) == expected


@pytest.mark.parametrize(
    ("since", "window", "message"),
    [
        ("yesterday", None, "not an ISO-8601 timestamp"),
        ("2027-01-01", None, "in the future"),
        (None, "1y", "use a number and m, h, d or w"),
        (None, "-1d", "must be positive"),
        ("2026-05-30", "1d", "not both"),
    ],
)
def test_bad_windows_are_refused(since: str | None, window: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_window(since, window, NOW)


def test_bad_ratings_and_orphans_stop_the_run_with_their_keys(tmp_path: Path) -> None:
    url = _shop(tmp_path / "shop.db")
    lake = str(tmp_path / "lake")
    _sql(
        url,
        "UPDATE ratings SET productRating = 9 WHERE customerNumber = 112",
        "INSERT INTO ratings VALUES (999, 'S10_1678', 4, '2026-01-01 00:00:00')",
        "INSERT INTO ratings VALUES (114, 'S99_0000', 4, '2026-01-01 00:00:00')",
    )
    with pytest.raises(QualityGateFailed) as failed:
        run_etl(url, lake)
    checks = {c.name: c for c in failed.value.report.checks}
    assert (checks["rating_range"].count, checks["orphans"].count) == (1, 2)
    assert checks["rating_range"].sample_keys == [[112, "S10_1678"]]
    assert sorted(checks["orphans"].sample_keys) == [[114, "S99_0000"], [999, "S10_1678"]]
    assert failed.value.report.counts["rows_read"] == 6 and not list(
        LocalStore(lake).list("ratings_ml_training/_")
    )
    # a suppressed customer's orphans are not counted; a tolerance lets the rest through
    summary = run_etl(
        url, lake, suppressed=lambda: {999}, thresholds=Thresholds(rating_max=10, max_orphan_fraction=0.2)
    )
    assert summary.quality is not None and summary.quality.counts["orphans"] == 1 and summary.rows == 4
