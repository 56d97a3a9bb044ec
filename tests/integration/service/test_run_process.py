"""``recsys run --api-loop process``: the API in a supervised child process, as it runs in a container.

Real Kinesis/Firehose on the moto server, real PostgreSQL, the real model. The API child answers,
/metrics carries the API's and the consumer's families (each once), a killed child is restarted,
SIGTERM drains and exits 0 leaving no process behind, and a child never outlives its parent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from infra.aws import sync_client

from .conftest import AppClient, run_settings, until


def _families(text: str) -> dict[str, Any]:
    families = list(text_string_to_metric_families(text))
    counts = collections.Counter(f.name for f in families)
    assert not [n for n, c in counts.items() if c > 1], "a metric family appears twice"
    return {f.name: f for f in families}


def _stream(tag: str) -> tuple[str, str, str]:
    from consumer.setup import ensure_delivery_stream, ensure_stream

    stream, delivery = f"runp-{tag}", f"runp-out-{tag}"
    ensure_stream(stream, 1)
    ensure_delivery_stream(delivery, f"s3://runp-out-{tag}/records")
    return stream, delivery, f"s3://runp-out-{tag}/dead-letters"


@contextmanager
def _recsys_run(database_url: str, stream: str, delivery: str, dead_letters: str) -> Iterator[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        RECSYS_CONSUMER__LEASE_TAKE_INTERVAL_S="0.2",
        RECSYS_CONSUMER__POLL_INTERVAL_S="0.2",
        RECSYS_CONSUMER__BATCH_MAX_WAIT_MS="50",
    )
    argv = [str(Path(sys.executable).with_name("recsys")), "run", "--api-loop", "process", "--port", "0"]
    argv += ["--database-url", database_url, "--stream", stream, "--delivery-stream", delivery]
    argv += ["--dead-letters", dead_letters]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        family = [proc.pid]
        with_children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        family += [c.pid for c in with_children]
        for pid in family:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _banner_url(proc: subprocess.Popen[str]) -> str:
    """The API URL from `recsys run`'s banner (the child's own `API on ...` line may come first)."""
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the process exits
        if line.startswith("consuming "):
            found = re.search(r"API on (http://\S+) ", line)
            assert found, line
            assert "API loop: process" in line, line
            return found.group(1)
    raise AssertionError(f"recsys run exited with {proc.wait()} before its banner")


def _api_children(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children() if "serve" in c.cmdline()]


def test_run_process_serves_merges_metrics_restarts_and_drains(model_db: str) -> None:
    tag = uuid.uuid4().hex[:8]
    customer = 800_000 + uuid.uuid4().int % 100_000
    stream, delivery, dead = _stream(tag)
    kinesis = sync_client("kinesis")
    with _recsys_run(model_db, stream, delivery, dead) as proc, httpx.Client(timeout=5) as http:
        url = _banner_url(proc)
        [child] = _api_children(proc)
        # the consumer runs below the API in CPU priority (RECSYS_CONSUMER__NICE, 10): every thread
        # of the parent but the one that starts API children; the API child keeps ours
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        nices = sorted(os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(proc.pid).threads())
        assert nices[0] == ours and len(nices) > 2 and set(nices[1:]) == {max(ours, 10)}, nices
        assert child.nice() == ours
        event = {
            "customer_number": customer,
            "city": "Nantes",
            "country": "France",
            "credit_limit": 21000.0,
            "browse_history": [{"product_code": "S10_1000", "quantity": 1, "in_shopping_cart": False}],
        }
        put = kinesis.put_record(
            StreamName=stream, PartitionKey=str(customer), Data=json.dumps(event).encode()
        )
        event_id = f"{put['ShardId']}:{put['SequenceNumber']}"

        def streamed() -> dict[str, Any] | None:
            body: dict[str, Any] = http.get(f"{url}/recommendations/{customer}").json()
            return body if body.get("event_id") == event_id else None

        answer: dict[str, Any] = until(streamed, 60, "the streamed answer, served by the API process")
        assert answer["source"] == "stream"

        families = _families(http.get(f"{url}/metrics").text)
        assert "recsys_api_requests" in families  # the API process's own
        assert "recsys_consumer_records_in" in families  # the parent's, appended
        [up] = families["recsys_api_consumer_metrics_up"].samples
        assert up.value == 1
        [records_in] = [
            s for s in families["recsys_consumer_records_in"].samples if s.name.endswith("_total")
        ]
        assert records_in.value >= 1
        lookups = {
            (s.labels["cache"], s.labels["result"]): s.value
            for s in families["recsys_consumer_cache_lookups"].samples
            if s.name.endswith("_total")
        }
        assert lookups[("candidates", "miss")] >= 1  # the model version's cache, reported by the consumer

        # kill -9 of the API child: the parent starts another on the same socket
        child.kill()
        child.wait(timeout=10)

        def replaced() -> psutil.Process | None:
            fresh = [c for c in _api_children(proc) if c.pid != child.pid]
            if not fresh:
                return None
            try:
                ok = http.get(f"{url}/readyz").status_code == 200
            except httpx.HTTPError:
                return None
            return fresh[0] if ok else None

        second: psutil.Process = until(replaced, 90, "a restarted API process that is ready")
        assert proc.poll() is None, "the parent survives its API child"
        assert second.nice() == ours, "a restarted API child keeps the API's priority"
        assert http.get(f"{url}/recommendations/{customer}").json()["event_id"] == event_id

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE, "no API process left"

    async def leases() -> list[asyncpg.Record]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(model_db)
        try:
            return await conn.fetch(
                "SELECT owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", stream
            )
        finally:
            await conn.close()

    rows = asyncio.run(leases())
    assert [r["owner"] for r in rows] == [None]  # released on the way out
    assert rows[0]["checkpoint_seq"] == put["SequenceNumber"]


def test_api_process_stops_when_its_parent_is_killed(model_db: str) -> None:
    stream, delivery, dead = _stream(uuid.uuid4().hex[:8])
    with _recsys_run(model_db, stream, delivery, dead) as proc:
        _banner_url(proc)
        [child] = _api_children(proc)
        proc.kill()
        proc.wait()
        # the child's pipe from the parent closes: it drains and exits on its own (reparented, so
        # its exit status is not ours to read; psutil's wait raises TimeoutExpired if it lingers)
        child.wait(timeout=60)
        assert not child.is_running()


# ------------------------------------------------------------------- /metrics with another process's part


async def test_metrics_append_the_consumer_process_families_once(api_client: AppClient) -> None:
    registry = CollectorRegistry()
    Counter("recsys_test_foreign_events", "a family only the other process has", registry=registry).inc(3)
    both = Counter(
        "recsys_api_requests", "a family both have: served once, ours", ["route"], registry=registry
    )
    both.labels("/elsewhere").inc()  # with a sample, so its `_created` family is there too
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        async with api_client(consumer_metrics_url=url) as client:
            await client.get("/healthz")
            families = _families((await client.get("/metrics")).text)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    [foreign] = [s for s in families["recsys_test_foreign_events"].samples if s.name.endswith("_total")]
    assert foreign.value == 3
    assert families["recsys_api_requests"].documentation.startswith("HTTP requests answered")
    assert not [s for s in families["recsys_api_requests"].samples if s.labels.get("route") == "/elsewhere"]
    created = families["recsys_api_requests_created"].samples
    assert created and not [s for s in created if s.labels.get("route") == "/elsewhere"]
    assert families["recsys_api_consumer_metrics_up"].samples[0].value == 1


async def test_metrics_without_the_consumer_process_still_serve_the_api(api_client: AppClient) -> None:
    async with api_client(consumer_metrics_url="http://127.0.0.1:1/metrics") as client:
        await client.get("/healthz")
        resp = await client.get("/metrics")
    assert resp.status_code == 200
    families = _families(resp.text)
    assert "recsys_api_requests" in families
    assert families["recsys_api_consumer_metrics_up"].samples[0].value == 0


# ------------------------------------------------------------------- running(): what the demo and bench use


async def test_running_context_manager_in_process_mode(model_db: str, tmp_path: Path) -> None:
    from recsys.runtime import running

    stream, delivery, _ = await asyncio.to_thread(_stream, uuid.uuid4().hex[:8])
    settings = run_settings(model_db, stream, delivery, tmp_path)
    stop = asyncio.Event()
    mine = psutil.Process()
    async with (
        running(settings, stop, api_loop="process") as up,
        httpx.AsyncClient(base_url=up.url, timeout=5) as client,
    ):
        [child] = [c for c in mine.children() if "serve" in c.cmdline()]
        assert (await client.get("/readyz")).status_code == 200
        families = _families((await client.get("/metrics")).text)
        assert {"recsys_api_requests", "recsys_consumer_records_in"} <= families.keys()
        stop.set()
    assert all(t.done() and t.exception() is None for t in up.tasks)
    assert not child.is_running(), "the API process ended with running()"
    assert not [c for c in mine.children() if "serve" in c.cmdline()]


def test_restart_delay_backs_off_then_gives_up() -> None:
    from core.errors import InfraError
    from recsys.runtime import restart_delay

    restarts: list[float] = []
    delays = []
    for n in range(5):
        delays.append(restart_delay(restarts, now=100.0 + n))
        restarts.append(100.0 + n)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    with pytest.raises(InfraError, match="died 6 times"):  # a child that keeps dying ends recsys run
        restart_delay(restarts, now=106.0)
    assert restart_delay(restarts, now=1_000.0) == 0.5  # old deaths leave the window
    assert restarts == []
