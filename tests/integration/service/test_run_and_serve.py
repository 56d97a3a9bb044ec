"""``recsys run`` (consumer + API in one process) and ``recsys serve`` as they run in a container:
real Kinesis/Firehose on the moto server, real PostgreSQL, the real model; SIGTERM ends them with 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from infra.aws import sync_client
from recsys.runtime import ApiLoop, running

from .conftest import run_settings, until_async


@pytest.mark.parametrize("api_loop", ["own", "shared"])
async def test_run_consumes_serves_and_drains_on_stop(
    model_db: str, tmp_path: Path, aws_endpoint: str, api_loop: ApiLoop
) -> None:
    from consumer.setup import ensure_delivery_stream, ensure_stream

    tag = uuid.uuid4().hex[:8]
    customer = 700_000 + uuid.uuid4().int % 100_000  # moto numbers every new stream's records alike
    stream, delivery, bucket = f"run-{tag}", f"run-out-{tag}", f"run-out-{tag}"
    await asyncio.to_thread(ensure_stream, stream, 1)
    await asyncio.to_thread(ensure_delivery_stream, delivery, f"s3://{bucket}/records")
    settings = run_settings(model_db, stream, delivery, tmp_path, batch_max_wait_ms=50)
    kinesis = sync_client("kinesis")
    events = [
        {"customer_number": customer, "city": "Nantes", "country": "France", "credit_limit": 21000.0,
         "browse_history": [{"product_code": "S10_1000", "quantity": i + 1, "in_shopping_cart": False}],
         "event_time": f"2026-11-26T06:00:0{i}Z"}
        for i in range(3)
    ]  # fmt: skip
    stop = asyncio.Event()
    async with (
        running(settings, stop, api_loop=api_loop) as up,
        httpx.AsyncClient(base_url=up.url, timeout=5) as client,
    ):
        put = [
            kinesis.put_record(StreamName=stream, PartitionKey=str(customer), Data=json.dumps(e).encode())
            for e in events
        ]
        last_id = f"{put[-1]['ShardId']}:{put[-1]['SequenceNumber']}"

        async def streamed() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/recommendations/{customer}")).json()
            return body if body.get("event_id") == last_id else None

        answer = await until_async(streamed, 60, "the stream answer of the last event")
        metrics = (await client.get("/metrics")).text
        stop.set()
    assert answer["source"] == "stream"
    assert answer["recommended_items"]
    assert "recsys_api_requests_total" in metrics
    assert "recsys_api_model_info" in metrics
    consumer_metrics = [
        line for line in metrics.splitlines() if line.startswith("recsys_") and "api" not in line
    ]
    assert consumer_metrics, "the consumer's metrics are served by the same /metrics"
    assert up.consumer.stats.records_in == 3
    assert all(t.done() and t.exception() is None for t in up.tasks)
    conn: asyncpg.Connection[Any] = await asyncpg.connect(model_db)
    try:
        owners = await conn.fetch(
            "SELECT owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", stream
        )
    finally:
        await conn.close()
    assert [r["owner"] for r in owners] == [None]  # released on the way out
    assert owners[0]["checkpoint_seq"] == put[-1]["SequenceNumber"]  # drained and checkpointed


def test_serve_answers_then_exits_0_on_sigterm(model_db: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("recsys")), "serve", "--port", "0", "--database-url", model_db],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the server accepts requests
        assert banner.startswith("API on http://127.0.0.1:"), banner + (
            proc.stderr.read() if proc.stderr else ""
        )
        url = banner.split()[2]
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        assert httpx.get(f"{url}/recommendations/103", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
