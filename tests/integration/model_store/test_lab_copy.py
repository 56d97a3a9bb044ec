"""The lab's import path: a freshly trained hybrid version's embeddings CSVs COPY into the lab's tables.

DESIGN.md fixes ``embeddings/user_embeddings.csv`` (and the item file) as ``id,embedding`` with the
vector in pgvector's text form, and the lab's ``sql/embeddings.sql`` tables as
``item_emb(id varchar primary key, embedding vector(32))`` and ``user_emb(id int primary key,
embedding vector(32))``. The lab loads the files with ``COPY ... FROM STDIN (FORMAT csv, HEADER)``
(psql's ``\\copy``): that must work on what ``recsys train`` exports, with no column to strip.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from infra.objectstore import LocalStore
from model_store.artifacts import FILES, load_bundle

from .conftest import Artifacts


@pytest.fixture
async def lab_schema(ms_database_url: str) -> AsyncIterator[tuple[asyncpg.Connection[Any], str]]:
    """The lab's two tables, exactly as its ``sql/embeddings.sql`` makes them, in a schema of their own."""
    schema = f"lab_{uuid.uuid4().hex[:8]}"
    conn: asyncpg.Connection[Any] = await asyncpg.connect(ms_database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TABLE {schema}.item_emb (id varchar PRIMARY KEY, embedding vector(32))")
        await conn.execute(f"CREATE TABLE {schema}.user_emb (id int PRIMARY KEY, embedding vector(32))")
        yield conn, schema
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def _copy(conn: asyncpg.Connection[Any], schema: str, table: str, body: bytes) -> None:
    await conn.copy_to_table(table, source=io.BytesIO(body), schema_name=schema, format="csv", header=True)


async def test_a_trained_hybrid_versions_csvs_copy_into_the_lab_tables(
    artifacts: Artifacts, lab_schema: tuple[asyncpg.Connection[Any], str]
) -> None:
    conn, schema = lab_schema
    version = artifacts.versions[0]
    folder = Path(artifacts.uri) / version
    bundle = load_bundle(LocalStore(artifacts.uri), version)
    assert bundle.config.hybrid and bundle.user_bought is not None  # the version does have bought lists
    await _copy(conn, schema, "item_emb", (folder / FILES["item_embeddings"]).read_bytes())
    await _copy(conn, schema, "user_emb", (folder / FILES["user_embeddings"]).read_bytes())

    users = await conn.fetch(f"SELECT id, embedding::text AS e FROM {schema}.user_emb ORDER BY id")
    assert [r["id"] for r in users] == sorted(bundle.user_ids)
    position = {u: i for i, u in enumerate(bundle.user_ids)}
    for row in users:  # the text form reads back to the exported float32 values
        got = np.array([float(v) for v in row["e"][1:-1].split(",")], dtype=np.float32)
        np.testing.assert_array_equal(got, bundle.user_vectors[position[row["id"]]])
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.item_emb") == len(bundle.item_ids)

    # the lab's query: a customer's top 10 by inner product, the same scores numpy gives the vectors
    customer = bundle.user_ids[3]
    top = await conn.fetch(
        f"SELECT i.id, -(i.embedding <#> u.embedding) AS score FROM {schema}.item_emb i, {schema}.user_emb u "
        "WHERE u.id = $1 ORDER BY i.embedding <#> u.embedding LIMIT 10",
        customer,
    )
    scores = bundle.item_vectors.astype(np.float64) @ bundle.user_vectors[3].astype(np.float64)
    item_row = {code: i for i, code in enumerate(bundle.item_ids)}
    np.testing.assert_allclose([r["score"] for r in top], np.sort(scores)[::-1][:10], atol=1e-5)
    np.testing.assert_allclose([scores[item_row[r["id"]]] for r in top], [r["score"] for r in top], atol=1e-5)


async def test_the_previous_releases_three_column_file_is_what_broke_the_copy(
    artifacts: Artifacts, lab_schema: tuple[asyncpg.Connection[Any], str]
) -> None:
    """The regression this layout fixes: a third ``bought`` column is extra data to the lab's table."""
    conn, schema = lab_schema
    folder = Path(artifacts.uri) / artifacts.versions[0]
    two = (folder / FILES["user_embeddings"]).read_bytes().decode().splitlines()
    three = "\n".join(["id,embedding,bought", *(line + ',"[]"' for line in two[1:])]) + "\n"
    with pytest.raises(asyncpg.BadCopyFileFormatError, match="extra data"):
        await _copy(conn, schema, "user_emb", three.encode())
