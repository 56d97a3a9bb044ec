"""``recsys forget`` against every store, checked by independent reads (SQL, boto3, pyarrow).

One world (conftest.py) is filled once; the tests run in order: dry run, real run, repeat run,
suppression through the command line.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compliance import Targets, forget
from core.errors import RecsysError
from infra.lake import latest_run, read_run
from infra.objectstore import open_store
from infra.suppression import SuppressionList
from model_store.artifacts import load_bundle
from recsys.cli import main as cli_main

from .conftest import World


@dataclass
class Snapshot:
    """Everything of every store, read without the product's compliance code."""

    pg: dict[str, Counter[int]]  # table -> rows per customer
    objects: dict[str, bytes]  # every S3 key of the bucket -> body
    delivered: Counter[int]  # delivered records per customer
    dead: Counter[str]  # dead letters per "customer" (parsed from the raw record, or "?")
    lake: dict[str, Counter[int]]  # lake parquet key -> rows per customer
    latest_lake: pa.Table  # the published run's rows
    user_ids: dict[str, list[int]]  # artifact version -> user ids (after checksum verification)
    bought_ids: dict[str, list[int]]  # artifact version -> ids of its user_bought.csv (raw CSV)


def _s3() -> Any:
    return boto3.client("s3")


def _objects(bucket: str) -> dict[str, bytes]:
    s3 = _s3()
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _dead_customer(letter: dict[str, Any]) -> str:
    raw = base64.b64decode(letter["data_base64"])
    try:
        named = json.loads(raw)["customer_number"]
        return str(named[0] if isinstance(named, list) else named)
    except (ValueError, KeyError):
        text = raw.decode(errors="replace")
        return text.split(":", 1)[1].split(",", 1)[0].strip() if "customer_number" in text else "?"


async def snapshot(world: World) -> Snapshot:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(world.database_url)
    try:
        pg: dict[str, Counter[int]] = {}
        for table, column in [
            ("latest_recommendations", "customer_number"),
            ("customer_notes", "customer_number"),
            ("customer_answers", "customer_number"),  # each version's precomputed answers
        ]:
            rows = await conn.fetch(f"SELECT {column} AS c FROM {table}")
            pg[table] = Counter(int(r["c"]) for r in rows)
        for r in await conn.fetch("SELECT user_table FROM model_versions ORDER BY version"):
            rows = await conn.fetch(f"SELECT id FROM {r['user_table']}")
            pg[r["user_table"]] = Counter(int(x["id"]) for x in rows)
        pg["user_emb (view)"] = Counter(int(x["id"]) for x in await conn.fetch("SELECT id FROM user_emb"))
    finally:
        await conn.close()
    objects = _objects(world.bucket)
    delivered: Counter[int] = Counter()
    dead: Counter[str] = Counter()
    lake: dict[str, Counter[int]] = {}
    for key, body in objects.items():
        if key.startswith("delivery/"):
            for line in body.splitlines():
                delivered[int(json.loads(line)["customer_number"])] += 1
        elif key.startswith("dead-letters/"):
            for line in body.splitlines():
                dead[_dead_customer(json.loads(line))] += 1
        elif key.startswith("lake/") and key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(body))
            lake[key] = Counter(table.column("customerNumber").to_pylist())
    store = open_store(world.lake)
    latest = read_run(store, latest_run(store))
    artifacts = open_store(world.artifacts)
    user_ids = {v: load_bundle(artifacts, v).user_ids for v in world.versions}
    bought_ids = {
        key.split("/")[-3]: [int(r[0]) for r in list(csv.reader(io.StringIO(body.decode())))[1:]]
        for key, body in objects.items()
        if key.endswith("/embeddings/user_bought.csv")
    }
    return Snapshot(pg, objects, delivered, dead, lake, latest, user_ids, bought_ids)


def _targets(world: World) -> Targets:
    return Targets(world.database_url, world.lake, world.artifacts, world.delivery, world.dead_letters)


def _others_rows(table: pa.Table, target: int) -> list[dict[str, Any]]:
    rows = [r for r in table.to_pylist() if r["customerNumber"] != target]
    return sorted(rows, key=lambda r: (r["customerNumber"], r["productCode"]))


async def test_the_world_holds_the_customer_everywhere(world: World) -> None:
    """The precondition, so the later assertions could fail: every store holds the target and others."""
    snap = await snapshot(world)
    t = world.target
    for table, counts in snap.pg.items():
        assert counts[t] >= 1, table
        assert any(counts[o] for o in world.others), table
    assert len(snap.user_ids) == 2 and all(t in ids for ids in snap.user_ids.values())
    assert set(snap.bought_ids) == set(world.versions) and all(t in ids for ids in snap.bought_ids.values())
    assert snap.delivered[t] >= 1 and sum(snap.delivered[o] for o in world.others) >= 1
    assert sum(snap.delivered.values()) == world.delivered
    assert snap.dead[str(t)] == 3 and snap.dead[str(world.others[0])] == 3
    runs_with_target = {k.split("/runs/")[1].split("/")[0] for k, c in snap.lake.items() if c[t]}
    assert len(runs_with_target) == 3  # the older run, the latest run, the incomplete run
    assert any(f"customerNumber={t}/" in k for k in snap.lake)  # the older run's own file of the customer


async def test_dry_run_lists_every_store_and_changes_nothing(world: World) -> None:
    before = await snapshot(world)
    report = await forget(world.target, _targets(world), actor="tester", dry_run=True)
    after = await snapshot(world)
    assert after.objects == before.objects
    assert after.pg == before.pg
    found = {s.store: s for s in report.stores}
    assert set(found) == {"postgres", "artifacts", "lake", "delivery", "dead_letters"}
    t = world.target
    tables = {c.target: c.rows for c in found["postgres"].changes}
    assert tables == {name: before.pg[name][t] for name in before.pg if name != "user_emb (view)"}
    assert found["artifacts"].rows == 4  # two versions, each: user_embeddings.csv and user_bought.csv
    assert found["delivery"].rows == before.delivered[t]
    assert found["dead_letters"].rows == 3
    assert found["lake"].rows == sum(c[t] for c in before.lake.values())
    assert len(found["lake"].changes) == 3
    assert report.audit_id is None
    assert "DRY RUN" in report.lines()[0] and "dry run: nothing was changed" in report.lines()
    async with _conn(world) as conn:
        assert await conn.fetchval("SELECT count(*) FROM forget_audit") == 0


async def test_an_unreachable_store_fails_the_run_before_anything_changes(world: World) -> None:
    before = await snapshot(world)
    wrong = Targets(world.database_url, world.lake, world.artifacts, "s3://no-such-bucket-forget/x")
    with pytest.raises(RecsysError):
        await forget(world.target, wrong, actor="tester")
    after = await snapshot(world)
    assert after.pg == before.pg and after.objects == before.objects


class _conn:
    def __init__(self, world: World) -> None:
        self.url = world.database_url

    async def __aenter__(self) -> asyncpg.Connection[Any]:
        self.c: asyncpg.Connection[Any] = await asyncpg.connect(self.url)
        return self.c

    async def __aexit__(self, *exc: object) -> None:
        await self.c.close()


async def test_forget_removes_the_customer_everywhere_and_keeps_the_others(world: World) -> None:
    before = await snapshot(world)
    t = world.target
    report = await forget(t, _targets(world), actor="dpo-ticket-42")
    after = await snapshot(world)

    # PostgreSQL: nothing of the customer, every other row intact
    for table, counts in before.pg.items():
        assert after.pg[table][t] == 0, table
        assert after.pg[table] == Counter({c: n for c, n in counts.items() if c != t}), table
    # the artifact store: every version still verifies (load_bundle checks sha256), without the customer
    for version, ids in before.user_ids.items():
        assert after.user_ids[version] == [i for i in ids if i != t]
    # ... and without their already-bought list (the version's user_bought.csv)
    for version, ids in before.bought_ids.items():
        assert after.bought_ids[version] == [i for i in ids if i != t]
    artifacts = open_store(world.artifacts)
    for version in world.versions:
        bundle = load_bundle(artifacts, version)
        assert bundle.user_bought is not None and len(bundle.user_bought) == len(bundle.user_ids)
    # delivered records and dead letters: none of the customer, all of the others
    assert after.delivered[t] == 0
    assert after.delivered == Counter({c: n for c, n in before.delivered.items() if c != t})
    assert after.dead[str(t)] == 0
    assert after.dead == Counter({c: n for c, n in before.dead.items() if c != str(t)})
    # the lake: no file of any run holds the customer; the published run is a new one, complete,
    # with every other row unchanged
    assert all(counts[t] == 0 for counts in after.lake.values())
    assert not any(f"customerNumber={t}/" in k for k in after.lake)
    assert _others_rows(after.latest_lake, t) == _others_rows(before.latest_lake, t)
    lake = open_store(world.lake)
    published = latest_run(lake)
    assert published.row_count == after.latest_lake.num_rows
    assert published.options["rewritten_from"] not in {k.split("/runs/")[1].split("/")[0] for k in after.lake}
    for key in published.files:
        assert lake.exists(key)
    # the audit row: who, what, counts; never the data
    async with _conn(world) as conn:
        row = await conn.fetchrow("SELECT * FROM forget_audit WHERE id = $1", report.audit_id)
    assert row is not None and row["actor"] == "dpo-ticket-42" and row["changed"] is True
    assert row["customer_number"] == t and row["suppressed"] is False
    stores = json.loads(row["stores"])
    assert stores["delivery"]["rows"] == before.delivered[t]
    assert stores["dead_letters"]["rows"] == 3
    assert stores["artifacts"]["rows"] == 4
    assert stores["postgres"]["rows"] == sum(
        before.pg[name][t] for name in before.pg if name != "user_emb (view)"
    )
    text = json.dumps(stores) + " ".join(row["out_of_scope"])
    target_city = next(r["city"] for r in before.latest_lake.to_pylist() if r["customerNumber"] == t)
    assert target_city not in text and "recommended_items" not in text and "productCode" not in text
    assert "[0." not in text and "[-0." not in text  # no vector
    assert any("source database" in note for note in row["out_of_scope"])


async def test_a_second_run_changes_nothing_and_says_so(world: World) -> None:
    before = await snapshot(world)
    report = await forget(world.target, _targets(world), actor="dpo-ticket-42")
    after = await snapshot(world)
    assert after.objects == before.objects and after.pg == before.pg
    assert report.changes == [] and not report.changed
    assert any(line.startswith("nothing left to forget") for line in report.lines())
    async with _conn(world) as conn:
        row = await conn.fetchrow("SELECT changed, stores FROM forget_audit WHERE id = $1", report.audit_id)
    assert row is not None and row["changed"] is False
    assert all(s["rows"] == 0 for s in json.loads(row["stores"]).values())


def test_cli_suppress_records_the_customer_and_the_consumer_hook_sees_it(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = world.others[1]
    monkeypatch.setenv("RECSYS_ACTOR", "cli-user")
    argv = ["forget", str(other), "--suppress", "--database-url", world.database_url, "--lake", world.lake]
    argv += [
        "--artifacts",
        world.artifacts,
        "--delivery",
        world.delivery,
        "--dead-letters",
        world.dead_letters,
    ]
    assert cli_main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "would add" in dry and "source database" in dry
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"customer {other} added to suppressed_customers" in out
    assert "audit record forget_audit.id" in out


@pytest.mark.parametrize("number", ["2147483648", "99999999999999999999", "-1"])
def test_cli_refuses_a_number_no_customer_can_have_in_one_line(
    number: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["forget", "--database-url", world.database_url, "--", number])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "0..2147483647" in err[0], err


async def test_suppression_list_loads_and_refreshes_cheaply(world: World) -> None:
    from infra.pg import create_pool

    now = [0.0]
    pool = await create_pool(world.database_url, min_size=1, max_size=2)
    try:
        suppression = await SuppressionList.load(pool, refresh_s=30, clock=lambda: now[0])
        assert suppression.contains(world.others[1])  # added by the command above
        assert not suppression.contains(world.others[2])
        await pool.execute(
            "INSERT INTO suppressed_customers (customer_number, actor) VALUES ($1, 'test')", world.others[2]
        )
        assert not await suppression.maybe_refresh()  # not due yet: no query
        assert not suppression.contains(world.others[2])
        now[0] = 31.0
        assert await suppression.maybe_refresh()
        assert suppression.contains(world.others[2])
        kept, dropped = suppression.partition(
            [(1, world.others[2]), (2, world.target), (3, world.others[1]), (4, None)], lambda pair: pair[1]
        )
        assert [n for n, _ in kept] == [2, 4] and [n for n, _ in dropped] == [1, 3]
        reloads = suppression.reloads
        now[0] = 62.0
        assert not await suppression.maybe_refresh()  # due, checked, unchanged: no full read
        assert suppression.reloads == reloads
    finally:
        await pool.close()


async def test_etl_leaves_suppressed_customers_out_of_the_lake(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra.objectstore import LocalStore

    suppressed, kept = world.others[2], world.others[0]  # (others[2]: also by the test above)
    async with _conn(world) as conn:
        await conn.execute(
            "INSERT INTO suppressed_customers (customer_number, actor) VALUES ($1, 'test') "
            "ON CONFLICT DO NOTHING",
            suppressed,
        )
    lake = str(tmp_path / "lake")
    argv = ["etl", "--source-url", world.shop, "--lake", lake, "--database-url", world.database_url]
    assert await asyncio.to_thread(cli_main, argv) == 0
    assert "rows of suppressed customers left out" in capsys.readouterr().out
    store = LocalStore(lake)
    customers = set(read_run(store, latest_run(store)).column("customerNumber").to_pylist())
    assert kept in customers and suppressed not in customers
