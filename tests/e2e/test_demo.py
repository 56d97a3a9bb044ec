"""``recsys demo --events 200`` as a user runs it: a subprocess on a fresh state folder, nothing
configured. Then, independently of the demo's own summary: every event it put is in S3 once after
de-duplication, and the API (the real app and model on the demo's database) answers every customer
that browsed from the stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from recsys.stack import LocalStack

EVENTS = 200


def _demo_env(state: Path) -> dict[str, str]:
    """The environment of a fresh machine: no RECSYS_* or AWS_* settings but the state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AWS_"))}
    env["RECSYS_STATE_DIR"] = str(state)
    env["RECSYS_PORT"] = "0"  # a free port: tests may run beside another server on 8000
    return env


def _delivered(endpoint: str) -> dict[str, list[dict[str, Any]]]:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    records: dict[str, list[dict[str, Any]]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="recsys-delivery", Prefix="recommendations/"
    ):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith("recommendations/errors/"):
                continue
            body = s3.get_object(Bucket="recsys-delivery", Key=obj["Key"])["Body"].read()
            for line in body.splitlines():
                if line.strip():
                    record = json.loads(line)
                    records.setdefault(record["event_id"], []).append(record)
    return records


async def _api_answers(database_url: str, customers: list[int]) -> dict[int, dict[str, Any]]:
    from infra.pg import create_pool
    from recsys.runtime import api_app
    from recsys.settings import Settings
    from service.model import open_recommender

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        recommender = await open_recommender(pool)
        app = api_app(Settings(database_url=database_url), pool=pool, recommender=recommender)
        answers: dict[int, dict[str, Any]] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                for customer in customers:
                    resp = await client.get(f"/recommendations/{customer}")
                    assert resp.status_code == 200, resp.text
                    answers[customer] = resp.json()
        await recommender.close()
        return answers
    finally:
        await pool.close()


@pytest.mark.slow
async def test_demo_puts_events_through_to_s3_and_the_api(tmp_path: Path) -> None:
    state = tmp_path / "state"
    recsys = Path(sys.executable).with_name("recsys")
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [str(recsys), "demo", "--events", str(EVENTS)],
            env=_demo_env(state),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, output
        assert "curl http://127.0.0.1:" in proc.stdout and "/recommendations/103" in proc.stdout
        assert "recsys stack down" in proc.stdout
        summary = json.loads((state / "demo-summary.json").read_text())
        put = summary["event_ids"]
        assert len(put) == len(set(put)) == EVENTS

        info = LocalStack(state).info()
        assert info is not None, "the demo leaves the stack running"
        delivered = await asyncio.to_thread(_delivered, info.aws_endpoint_url)
        missing = [e for e in put if e not in delivered]
        assert not missing, f"{len(missing)} events not delivered, e.g. {missing[:3]}"
        for event_id in put:
            copies = delivered[event_id]
            # de-duplication by event_id: replays carry the same event and the same answer
            first = {k: v for k, v in copies[0].items() if k != "processed_at"}
            assert all({k: v for k, v in c.items() if k != "processed_at"} == first for c in copies)
            record = copies[0]
            assert record["recommended_items"] and record["model_version"]
            assert set(record["similar_items"]) == {"product_code", "similar_items"}
            assert isinstance(record["customer_number"], int) and record["browse_history"]

        browsed = sorted({c[0]["customer_number"] for e, c in delivered.items() if e in set(put)})
        assert browsed == summary["customers"]
        answers = await _api_answers(info.database_url, browsed)
        assert {a["source"] for a in answers.values()} == {"stream"}
        assert all(a["event_id"] in delivered and a["recommended_items"] for a in answers.values())
    finally:
        await asyncio.to_thread(LocalStack(state).destroy)
