"""The Spark engine against the Python engine: the same lake run, row by row, on real MariaDB sources.

One local Spark session serves the module (the ``spark`` fixture); every source is small, so the
whole module stays within a minute or two on two cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl.gates import QualityGateFailed
from etl.pipeline import EtlSummary, SuppressedDuringRun, run_etl
from etl.seed import seed
from etl.spark_job import main as spark_job_main
from etl.spark_job import run_spark_etl
from infra.lake import latest_run
from infra.objectstore import LocalStore
from recsys.cli import main as cli

from .conftest import assert_matches_sql, local_bytes, new_mariadb, s3_bytes, sql_join

pytestmark = [
    pytest.mark.mariadb,
    # py4j (the Python <-> JVM bridge) leaves its gateway sockets to the garbage collector
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

Lake = Any  # a function key -> bytes


def _run(lake_bytes: Lake, dataset: str = "ratings_ml_training") -> tuple[dict[str, Any], dict[str, Any]]:
    """The published run, read with plain json + pyarrow: its manifest and each file by its key."""
    pointer = json.loads(lake_bytes(f"{dataset}/_latest.json"))
    manifest = json.loads(lake_bytes(pointer["manifest"]))
    files = {key: pq.read_table(pa.BufferReader(lake_bytes(key))) for key in manifest["files"]}
    return manifest, files


def _layout(manifest: dict[str, Any]) -> list[str]:
    run = manifest["run_id"]
    return sorted(key.replace(run, "<run>") for key in manifest["files"])


def _rows(files: dict[str, pa.Table]) -> list[dict[str, Any]]:
    rows = [row for table in files.values() for row in table.to_pylist()]
    return sorted(rows, key=lambda r: (r["customerNumber"], r["productCode"]))


def assert_same_runs(spark_lake: Lake, python_lake: Lake) -> list[dict[str, Any]]:
    """Same files (keys, schema with nullability, codec), same manifest contract, same rows and types."""
    s_manifest, s_files = _run(spark_lake)
    p_manifest, p_files = _run(python_lake)
    assert _layout(s_manifest) == _layout(p_manifest)
    for key in ("schema", "row_count", "dataset", "source", "format_version"):
        assert s_manifest[key] == p_manifest[key], key
    assert s_manifest["options"]["engine"] == "spark" and p_manifest["options"]["engine"] == "python"
    for table in (*s_files.values(), *p_files.values()):
        reference = next(iter(p_files.values())).schema
        assert table.schema.equals(reference, check_metadata=False), (table.schema, reference)
    s_rows, p_rows = _rows(s_files), _rows(p_files)
    assert len(s_rows) == len(p_rows) == s_manifest["row_count"]
    for got, want in zip(s_rows, p_rows, strict=True):
        assert got == want
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
    return s_rows


def _sql(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def shop(mariadb_source: str) -> str:
    seed(mariadb_source, scale=1, seed=42)
    return mariadb_source


def test_the_seeded_shop_gives_the_same_run_on_both_engines(
    shop: str, spark: Any, tmp_path: Path, s3_bucket: str
) -> None:
    for partition in ("none", "country"):
        run_etl(shop, str(tmp_path / f"py-{partition}"), partition_by=partition)
        summary = run_spark_etl(spark, shop, f"s3://{s3_bucket}/{partition}", partition_by=partition)
        assert summary.engine == "spark" and summary.rows == summary.rows_read > 3_000
        rows = assert_same_runs(s3_bytes(s3_bucket, partition), local_bytes(tmp_path / f"py-{partition}"))
        assert_matches_sql(pa.Table.from_pylist(rows), sql_join(shop))
    country_keys = _layout(_run(s3_bytes(s3_bucket, "country"))[0])
    assert any("/country=New%20Zealand/part-00000.parquet" in key for key in country_keys)


def test_the_cli_runs_the_spark_engine(shop: str, spark: Any, tmp_path: Path, capsys: Any) -> None:
    run_etl(shop, str(tmp_path / "py"))
    args = ["etl", "--engine", "spark", "--source-url", shop, "--lake", str(tmp_path / "sp")]
    assert cli([*args, "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "engine=spark" in out and "quality gates passed" in out
    assert_same_runs(local_bytes(tmp_path / "sp"), local_bytes(tmp_path / "py"))
    # the Glue job's entry point: the same script, Glue's own arguments ignored
    glue = [
        "--JOB_NAME", "recsys-etl", "--job-bookmark-option", "job-bookmark-disable",
        "--source-url", shop, "--lake", str(tmp_path / "glue"),
        "--etl-settings", '{"spark_read_partitions": 2}',
    ]  # fmt: skip
    assert spark_job_main(glue) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] > 3_000
    assert_same_runs(local_bytes(tmp_path / "glue"), local_bytes(tmp_path / "py"))
    # a source the Spark engine does not read: one line, exit 2
    assert cli(["etl", "--engine", "spark", "--source-url", "sqlite:///x.db", "--lake", str(tmp_path)]) == 2
    assert "reads MySQL/MariaDB sources" in capsys.readouterr().err


@pytest.fixture(scope="module")
def classicmodels(mysql_url: str, classicmodels_sql: Path | None) -> Any:
    if classicmodels_sql is None:
        pytest.skip("the classicmodels dump is not beside the checkout")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb/mysql client to load the dump")
    url, drop = new_mariadb(mysql_url)
    dump = classicmodels_sql.read_text(encoding="utf-8", errors="replace")
    dump = dump.replace("`classicmodels`", f"`{sa.make_url(url).database}`")
    u = sa.make_url(mysql_url)
    cmd = [client, f"-u{u.username or 'root'}", f"-h{u.host or '127.0.0.1'}", f"-P{u.port or 3306}"]
    try:
        subprocess.run(cmd, input=dump, text=True, check=True, capture_output=True, timeout=120)
        seed(url, scale=1, seed=7)
        yield url
    finally:
        drop()


def test_the_classicmodels_dump_gives_the_same_run_on_both_engines(
    classicmodels: str, spark: Any, tmp_path: Path
) -> None:
    run_etl(classicmodels, str(tmp_path / "py"))
    run_spark_etl(spark, classicmodels, str(tmp_path / "sp"))
    rows = assert_same_runs(local_bytes(tmp_path / "sp"), local_bytes(tmp_path / "py"))
    assert_matches_sql(pa.Table.from_pylist(rows), sql_join(classicmodels))
    atelier = next(r for r in rows if r["customerNumber"] == 103)
    assert atelier["creditLimit"] == 21000.0 and atelier["state"] is None and atelier["city"] == "Nantes"


@pytest.fixture(scope="module")
def ratings_log(mysql_url: str) -> Any:
    """A ratings log (no key on the pair, a ratedAt time): every other customer rated twice."""
    url, drop = new_mariadb(mysql_url)
    try:
        seed(url, scale=0.3, seed=3)
        _sql(
            url,
            "ALTER TABLE ratings DROP PRIMARY KEY, ADD COLUMN ratedAt DATETIME(6) NULL",
            "UPDATE ratings SET ratedAt = '2026-01-01 00:00:00'",
            "INSERT INTO ratings (customerNumber, productCode, productRating, ratedAt) "
            "SELECT customerNumber, productCode, 1 + (customerNumber + LENGTH(productCode)) %% 5, "
            "'2026-01-02 00:00:00' FROM ratings WHERE customerNumber %% 2 = 0",
        )
        yield url
    finally:
        drop()


@pytest.mark.parametrize("policy", ["replace", "latest", "average"])
def test_each_update_policy_folds_repeats_as_the_python_engine(
    ratings_log: str, spark: Any, tmp_path: Path, policy: str
) -> None:
    py = run_etl(ratings_log, str(tmp_path / "py"), update_policy=policy)
    sp = run_spark_etl(spark, ratings_log, str(tmp_path / "sp"), update_policy=policy)
    assert py.repeats_folded > 0 and (sp.rows, sp.rows_read) == (py.rows, py.rows_read)
    rows = assert_same_runs(local_bytes(tmp_path / "sp"), local_bytes(tmp_path / "py"))
    engine = sa.create_engine(ratings_log)
    with engine.connect() as conn:
        customer, code, first, second = conn.exec_driver_sql(
            "SELECT a.customerNumber, a.productCode, a.productRating, b.productRating FROM ratings a "
            "JOIN ratings b ON a.customerNumber = b.customerNumber AND a.productCode = b.productCode "
            "AND a.ratedAt < b.ratedAt WHERE a.productRating <> b.productRating LIMIT 1"
        ).one()
    engine.dispose()
    by_pair = {(r["customerNumber"], r["productCode"]): r["productRating"] for r in rows}
    got = by_pair[(customer, code)]
    assert got == ((first + second) / 2 if policy == "average" else float(second))


def test_a_suppressed_customer_is_left_out_by_both_engines(shop: str, spark: Any, tmp_path: Path) -> None:
    listed = {103, 112, 999_999}
    py = run_etl(shop, str(tmp_path / "py"), partition_by="customerNumber", suppressed=lambda: listed)
    # the cluster's way: Spark writes into the lake itself, the driver renames the files
    sp = run_spark_etl(
        spark,
        shop,
        str(tmp_path / "sp"),
        partition_by="customerNumber",
        suppressed=lambda: listed,
        stage_locally=False,
    )
    assert sp.suppressed_rows == py.suppressed_rows > 0 and sp.rows == py.rows
    rows = assert_same_runs(local_bytes(tmp_path / "sp"), local_bytes(tmp_path / "py"))
    assert not {r["customerNumber"] for r in rows} & listed
    keys = list(LocalStore(str(tmp_path / "sp")).list(""))
    assert not any("customerNumber=103/" in k or "_staging" in k for k in keys)


def test_a_failed_run_publishes_nothing(mysql_url: str, spark: Any, tmp_path: Path, capsys: Any) -> None:
    url, drop = new_mariadb(mysql_url)
    try:
        seed(url, scale=0.3, seed=5)
        lakes = {"python": tmp_path / "py", "spark": tmp_path / "sp"}
        before = {
            "python": run_etl(url, str(lakes["python"])).run_id,
            "spark": run_spark_etl(spark, url, str(lakes["spark"])).run_id,
        }
        # a customer suppressed while the run writes: the Spark run stops before publishing
        reads = iter([frozenset(), frozenset({103})])
        with pytest.raises(SuppressedDuringRun):
            run_spark_etl(spark, url, str(lakes["spark"]), suppressed=lambda: next(reads))
        # a rating out of range and a rating of an unknown customer: both engines' gates stop the run
        _sql(
            url,
            "ALTER TABLE ratings DROP CONSTRAINT ratings_rating_1_to_5",
            "UPDATE ratings SET productRating = 9 WHERE customerNumber = 103 ORDER BY productCode LIMIT 1",
            "INSERT INTO ratings (customerNumber, productCode, productRating) "
            "SELECT 424242, MIN(productCode), 3 FROM products",
        )
        reports = {}
        for name, runner in (
            ("python", lambda: run_etl(url, str(lakes["python"]))),
            ("spark", lambda: run_spark_etl(spark, url, str(lakes["spark"]))),
        ):
            with pytest.raises(QualityGateFailed) as failed:
                runner()
            assert "rating_range: 1 rating(s)" in str(failed.value) and "orphans: 1" in str(failed.value)
            store = LocalStore(str(lakes[name]))
            assert latest_run(store).run_id == before[name]
            runs = {k.split("/")[2] for k in store.list("ratings_ml_training/runs/")}
            failed_run = failed.value.report.run_id
            assert runs == {before[name], failed_run}  # the failed run keeps only its report
            assert list(store.list(f"ratings_ml_training/runs/{failed_run}/")) == [
                f"ratings_ml_training/runs/{failed_run}/_quality_report.json"
            ]
            report_key = f"ratings_ml_training/runs/{failed_run}/_quality_report.json"
            reports[name] = json.loads(store.get_bytes(report_key))
        for report in reports.values():
            checks = {c["name"]: c for c in report["checks"]}
            assert not report["passed"] and checks["row_count"]["passed"] and checks["schema"]["passed"]
            assert checks["orphans"]["sample_keys"][0][0] == 424242
            assert checks["rating_range"]["sample_keys"][0][0] == 103
        assert reports["python"]["counts"] == reports["spark"]["counts"]
        # the command: one line on stderr, exit 3
        capsys.readouterr()
        args = ["etl", "--engine", "spark", "--source-url", url, "--lake", str(lakes["spark"])]
        assert cli([*args, "--log-level", "ERROR"]) == 3
        # the command's own lines (a logging handler another test left on a closed stream may add noise)
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recsys etl")]
        assert len(err) == 1 and "failed its data-quality gates, nothing was published" in err[0], err
    finally:
        drop()


def test_an_incremental_run_equals_a_full_run_on_both_engines(
    mysql_url: str, spark: Any, tmp_path: Path
) -> None:
    url, drop = new_mariadb(mysql_url)
    try:
        seed(url, scale=0.3, seed=11)
        lakes = {name: str(tmp_path / name) for name in ("python", "spark", "full")}
        run_etl(url, lakes["python"])
        run_spark_etl(spark, url, lakes["spark"])
        _sql(
            url,
            "UPDATE ratings SET updatedAt = '2026-01-01 00:00:00'",
            # changed since: one customer's ratings move, one pair is new
            "UPDATE ratings SET productRating = productRating %% 5 + 1 WHERE customerNumber = 103",
            "INSERT INTO ratings (customerNumber, productCode, productRating) "
            "SELECT 112, MAX(p.productCode), 5 FROM products p "
            "WHERE p.productCode NOT IN (SELECT productCode FROM ratings WHERE customerNumber = 112)",
        )
        since = datetime(2026, 6, 1, tzinfo=UTC)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            query = "SELECT COUNT(*) FROM ratings WHERE updatedAt >= '2026-06-01'"
            changed = conn.exec_driver_sql(query).scalar()
        engine.dispose()
        rated = sum(1 for key in sql_join(url) if key[0] == 103)
        assert changed == rated + 1 < len(sql_join(url)) / 5  # every rating of 103 moved, one pair is new
        summaries: list[EtlSummary] = [
            run_etl(url, lakes["python"], since=since),
            run_spark_etl(spark, url, lakes["spark"], since=since),
        ]
        for summary in summaries:
            assert summary.rows_read == changed and summary.since == since
        run_etl(url, lakes["full"])
        for name in ("python", "spark"):
            run = latest_run(LocalStore(lakes[name]))
            assert run.options["since"] == since.isoformat() and run.options["merged_into"]
            rows = _rows(_run(local_bytes(Path(lakes[name])))[1])
            assert rows == _rows(_run(local_bytes(Path(lakes["full"])))[1])
        assert_matches_sql(pa.Table.from_pylist(rows), sql_join(url))
    finally:
        drop()


def test_a_spark_job_that_fails_says_why_in_one_line_and_publishes_nothing(
    shop: str, spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import etl.spark_job as job

    lake = tmp_path / "lake"
    before = run_spark_etl(spark, shop, str(lake)).run_id
    # the database refuses the read (here: a query it cannot parse), as a JDBC error would
    monkeypatch.setattr(job, "_compile", lambda query, engine: "SELECT FROM nowhere WHERE")
    with pytest.raises(job.SparkJobFailed, match=r"nothing was published: java\.sql\.\w+Exception"):
        run_spark_etl(spark, shop, str(lake))
    assert latest_run(LocalStore(str(lake))).run_id == before
    assert {k.split("/")[2] for k in LocalStore(str(lake)).list("ratings_ml_training/runs/")} == {before}
    capsys.readouterr()
    args = ["etl", "--engine", "spark", "--source-url", shop, "--lake", str(lake), "--log-level", "ERROR"]
    assert cli(args) == 2
    # the command's own lines (a logging handler another test left on a closed stream may add noise)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recsys etl")]
    assert len(err) == 1 and err[0].startswith("recsys etl: error: spark etl run"), err
