"""``recsys train`` and ``recsys load-vectors`` as a user runs them: lake and artifacts on S3 (moto)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq
import pytest

from infra.lake import LakeRun, new_run_id, publish_run, run_prefix
from infra.objectstore import open_store
from model_store.testing import synthetic_ratings
from recsys.cli import main


def _publish(lake_uri: str, tmp_path: Path) -> str:
    store = open_store(lake_uri)
    table = synthetic_ratings(seed=8)
    run_id = new_run_id()
    local = tmp_path / "part-00000.parquet"
    pq.write_table(table, local, compression="snappy")
    key = run_prefix(run_id) + "part-00000.parquet"
    store.put_file(key, local)
    schema = {f.name: str(f.type) for f in table.schema}
    publish_run(store, LakeRun(run_id, datetime.now(UTC), table.num_rows, [key], schema, "test"))
    return run_id


def test_train_then_load_vectors_from_s3(
    s3_bucket: str,
    ms_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lake, artifacts = f"s3://{s3_bucket}/lake", f"s3://{s3_bucket}/ml-artifacts"
    assert main(["train", "--lake", lake, "--artifacts", artifacts]) == 2
    assert "run `recsys etl` first" in capsys.readouterr().err

    run_id = _publish(lake, tmp_path)
    assert main(["train", "--lake", lake, "--artifacts", artifacts, "--json", "--epochs", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lake_run"] == run_id and summary["rows"] == 3050
    m = summary["metrics"]
    assert m["rmse"] < m["rmse_mean_baseline"] and m["ndcg_at_10"] > m["popular_ndcg_at_10"]
    version = summary["version"]
    store = open_store(artifacts)
    assert store.get_bytes("latest").decode().strip() == version
    assert f"{version}/manifest.json" in set(store.list(version))

    assert main(["load-vectors", "--artifacts", artifacts, "--database-url", ms_database_url]) == 0
    assert f"active version {version}" in capsys.readouterr().out
    assert asyncio.run(_active(ms_database_url)) == (version, summary["items"])

    # a tampered file: refused with one line, exit 2, and the active version does not change
    key = f"{version}/embeddings/item_embeddings.csv"
    store.put_bytes(key, store.get_bytes(key).replace(b"0", b"1", 1))
    code = main(
        ["load-vectors", "--artifacts", artifacts, "--version", version, "--database-url", ms_database_url]
    )
    err = capsys.readouterr().err
    assert code == 2 and "fails verification" in err and "Traceback" not in err
    assert asyncio.run(_active(ms_database_url))[0] == version


async def _active(url: str) -> tuple[str, int]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT version FROM model_versions WHERE active")
        return version, await conn.fetchval("SELECT count(*) FROM item_emb")
    finally:
        await conn.close()
