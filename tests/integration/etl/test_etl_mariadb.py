"""Seed and ETL against the machine's MariaDB, the lake on S3 (moto server), checked against SQL."""

from __future__ import annotations

import json

import pymysql
import pytest
import sqlalchemy as sa

from etl.pipeline import run_etl
from etl.seed import seed
from infra.lake import latest_run, read_run
from infra.objectstore import open_store
from recsys.cli import main as cli

from .conftest import assert_matches_sql, new_mariadb, read_lake_files, s3_bytes, sql_join

pytestmark = pytest.mark.mariadb


@pytest.fixture(scope="module")
def seeded(mariadb_source: str) -> str:
    summary = seed(mariadb_source, scale=1, seed=42)
    assert (summary.customers_created, summary.products_created) == (122, 110)
    assert summary.ratings_written > 2_500
    return mariadb_source


def test_seed_is_idempotent_and_keeps_what_exists(seeded: str) -> None:
    before = sql_join(seeded)
    again = seed(seeded, scale=1, seed=42)
    assert again.ratings_written == 0 and again.kept == ["customers", "products", "ratings"]
    assert sql_join(seeded) == before


def test_ratings_are_keyed_on_the_pair_and_checked(seeded: str) -> None:
    engine = sa.create_engine(seeded)
    try:
        pk = sa.inspect(engine).get_pk_constraint("ratings")["constrained_columns"]
        assert sorted(pk) == ["customerNumber", "productCode"]
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT customerNumber, productCode FROM ratings LIMIT 1")
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO ratings VALUES (103, 'S10_9999', 6)")
    finally:
        engine.dispose()


def test_etl_to_s3_matches_the_sql_join_row_by_row(seeded: str, s3_bucket: str) -> None:
    lake = f"s3://{s3_bucket}/lake"
    summary = run_etl(seeded, lake, chunk_rows=1_000)
    table = read_lake_files(s3_bytes(s3_bucket, "lake"))
    expected = sql_join(seeded)
    assert summary.rows == summary.rows_read == len(expected)
    assert_matches_sql(table, expected)
    # the library reader gives the same rows
    run = latest_run(open_store(lake))
    assert run.run_id == summary.run_id and run.row_count == len(expected)
    assert sorted(read_run(open_store(lake), run).to_pylist(), key=str) == sorted(table.to_pylist(), key=str)


def test_cli_partitions_by_country_and_reruns_safely(
    seeded: str, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = f"s3://{s3_bucket}/by-country"
    args = ["etl", "--source-url", seeded, "--lake", lake, "--partition-by", "country"]
    assert cli(args) == 0
    first = latest_run(open_store(lake))
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "rows written" in out and "partition_by=country" in out
    store = open_store(lake)
    second = latest_run(store)
    assert second.run_id > first.run_id and second.row_count == first.row_count
    countries = {key.split("/")[3] for key in second.files}
    assert "country=USA" in countries and "country=New%20Zealand" in countries
    table = read_lake_files(s3_bytes(s3_bucket, "by-country"))
    assert_matches_sql(table, sql_join(seeded))
    manifest = json.loads(store.get_bytes(f"ratings_ml_training/_manifests/{second.run_id}.json"))
    assert manifest["options"]["partition_by"] == "country" and manifest["schema"]["MSRP"] == "double"


def test_a_missing_column_is_one_line_and_exit_2(
    mysql_url: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url, drop = new_mariadb(mysql_url)
    try:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE customers (customerNumber INT PRIMARY KEY, city VARCHAR(50))")
            conn.exec_driver_sql("CREATE TABLE products (productCode VARCHAR(15) PRIMARY KEY)")
            conn.exec_driver_sql("CREATE TABLE ratings (customerNumber INT, productCode VARCHAR(15))")
        engine.dispose()
        assert cli(["etl", "--source-url", url, "--lake", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "productRating" in err[0] and "ratings" in err[0]
    finally:
        drop()


def test_an_unreachable_source_is_one_line_and_exit_2(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli(["etl", "--source-url", "mysql+pymysql://root:hunter2@127.0.0.1:1/shop", "--lake", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0] and "hunter2" not in err[0]
    assert cli(["etl", "--source-url", "nonsense://", "--lake", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_database_is_reported(
    mysql_url: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sa.make_url(mysql_url).set(database="recsys_no_such_db").render_as_string(hide_password=False)
    assert cli(["seed", "--source-url", url]) == 2
    assert "recsys_no_such_db" in capsys.readouterr().err
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", user="root", database="recsys_no_such_db", connect_timeout=3)
