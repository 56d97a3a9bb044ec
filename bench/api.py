"""API throughput and latency: GET /recommendations/{id} against a trivial FastAPI endpoint, alone
and while the consumer runs at full load in the same process.

The servers are real uvicorn on 127.0.0.1 inside this process's event loop (as `recsys serve` and
`recsys run` run them); the load comes from another process: a small asyncio HTTP/1.1 keep-alive
client (a few connections, requests back to back), cheap enough not to be the bottleneck.

- *trivial*: ``GET /trivial/{id}`` of a bare FastAPI app returning a constant JSON: the ceiling of
  FastAPI + uvicorn on this machine.
- *recommendations alone*: the real app on the stream path (one PostgreSQL round trip), customers
  with a stored answer.
- *recommendations + consumer*: the same app in ``recsys run``'s composition while the consumer
  works through a backlog of events on the moto Kinesis stream as fast as it can, for each
  ``--api-loop``: ``shared`` (one loop, one pool, one model), ``own`` (the API's own loop in a
  thread) and ``process`` (the API in a supervised child process, ``recsys serve``).

Headlines: the rps ratio recommendations/trivial, and the p99 ratio with/without the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from bench._harness import Figure, Report, bench_stack, peak_rss_mb, prepared_model, run_async

CONNECTIONS = 8


# ------------------------------------------------------------------------------------------ client
async def _load(
    host: str, port: int, paths: Sequence[str], duration_s: float, warmup_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    deadline = measure_from + duration_s

    async def connection(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    return
                path = paths[i % len(paths)]
                i += CONNECTIONS
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                status = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    errors += not status.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / duration_s,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
    }


def _client(job: tuple[str, int, list[str], float, float], out: Any) -> None:
    out.put(asyncio.run(_load(*job)))


async def drive(url: str, paths: list[str], duration_s: float, warmup_s: float = 1.0) -> dict[str, Any]:
    """Load ``url`` from a separate process for ``duration_s`` (after a warm-up); its figures."""
    host, port = url.removeprefix("http://").split(":")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client, args=((host, int(port), paths, duration_s, warmup_s), queue))
    proc.start()
    try:
        result: dict[str, Any] = await asyncio.to_thread(queue.get, True, duration_s + warmup_s + 60)
    finally:
        await asyncio.to_thread(proc.join, 30)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} non-200 answers from {url}{paths[0]}")
    return result


# ------------------------------------------------------------------------------------------ servers
@contextlib.asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    from service.server import ApiServer, bind_socket

    server = ApiServer(app, bind_socket("127.0.0.1", 0))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    await server.wait_ready()
    try:
        yield server.url
    finally:
        stop.set()
        await task


def _trivial_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/trivial/{customer_number}")
    async def trivial(customer_number: int) -> dict[str, Any]:
        return {"customer_number": customer_number, "ok": True}

    return app


async def _store_answers(pool: Any, customers: range, version: str) -> None:
    from core.recommendations import Recommendation, ScoredItem, SimilarItems, Source
    from infra.latest import LatestRow, PgLatestStore

    now = datetime.now(UTC)
    rec = Recommendation(
        tuple(ScoredItem(f"S10_{1000 + i}", 0.9 - i / 100) for i in range(10)),
        SimilarItems("S10_1678", tuple(ScoredItem(f"S12_{1000 + i}", 0.8 - i / 100) for i in range(10))),
        version,
        Source.STREAM,
    )
    rows = [LatestRow(c, rec, f"bench:{c}", now, now) for c in customers]
    await PgLatestStore(pool).upsert_many(rows)


def _prefill(stream: str, source_url: str, events: int) -> float:
    """Put ``events`` onto the stream before the consumer starts: its backlog. Returns seconds."""
    from consumer.producer import produce
    from etl.source import load_catalog

    catalog = load_catalog(source_url)
    started = time.perf_counter()
    produce(stream, catalog.customers, catalog.product_codes, count=events, seed=1)
    return time.perf_counter() - started


def _api_child_peak_mb() -> list[float]:
    """Peak RSS (``VmHWM``) of this process's ``recsys serve`` children (``--api-loop process``)."""
    import psutil

    out = []
    for child in psutil.Process().children():
        try:
            if "serve" in child.cmdline():
                out.append(peak_rss_mb(child.pid))
        except (psutil.Error, OSError):
            continue
    return out


# ------------------------------------------------------------------------------------------ main
async def _measure(quick: bool, report: Report, prepared: Any) -> None:
    from consumer.setup import ensure_delivery_stream, ensure_stream
    from infra.pg import create_pool
    from recsys.runtime import ApiLoop, api_app, running
    from recsys.settings import Settings
    from service.model import open_recommender

    duration = 3.0 if quick else 5.0
    runs = 2 if quick else 3
    customers = range(100, 222)
    rec_paths = [f"/recommendations/{c}" for c in customers]
    triv_paths = [f"/trivial/{c}" for c in customers]
    url = prepared.database_url
    settings = Settings(database_url=url, port=0)

    pool = await create_pool(url, min_size=2, max_size=10)
    try:
        await _store_answers(pool, customers, prepared.version)
        recommender = await open_recommender(pool)
        try:
            app = api_app(settings, pool=pool, recommender=recommender)
            trivial: list[dict[str, Any]] = []
            alone: list[dict[str, Any]] = []
            async with _serve(_trivial_app()) as triv_url, _serve(app) as rec_url:
                for _ in range(runs):  # interleaved, so drift hits both alike
                    trivial.append(await drive(triv_url, triv_paths, duration))
                    alone.append(await drive(rec_url, rec_paths, duration))
        finally:
            await recommender.close()
    finally:
        await pool.close()

    # the consumer at full load in the same process: a backlog it works through as fast as it can
    backlog = 50_000 if quick else 120_000  # the consumer runs through ~7k events/s here
    loaded_runs = 2
    loaded: dict[str, list[dict[str, Any]]] = {}
    api_peak_mb: list[float] = []
    consumed: dict[str, list[float]] = {}
    modes: tuple[ApiLoop, ...] = ("shared", "own", "process")
    for mode in modes:
        tag = uuid.uuid4().hex[:6]
        stream, delivery = f"bench-api-{tag}", f"bench-api-out-{tag}"
        await asyncio.to_thread(ensure_stream, stream, 2)
        await asyncio.to_thread(ensure_delivery_stream, delivery, f"s3://bench-api-{tag}/records")
        put_s = await asyncio.to_thread(_prefill, stream, prepared.source_url, backlog)
        print(f"  {mode} loop: backlog of {backlog} events put in {put_s:.1f}s", flush=True)
        run_settings = Settings(
            database_url=url, port=0, stream=stream, delivery_stream=delivery,
            dead_letters=f"s3://bench-api-{tag}/dead-letters",
        )  # fmt: skip
        stop = asyncio.Event()
        loaded[mode], consumed[mode] = [], []
        async with running(run_settings, stop, api_loop=mode) as up:
            for n in range(loaded_runs):
                before = up.consumer.stats.records_in
                t0 = time.perf_counter()
                result = await drive(up.url, rec_paths, duration)
                after = up.consumer.stats.records_in
                if after >= backlog:  # the consumer ran dry during this run: not "at full load"
                    print(f"  {mode} loop: backlog used up in run {n + 1}; its figures are dropped")
                    break
                loaded[mode].append(result)
                consumed[mode].append((after - before) / (time.perf_counter() - t0))
            if mode == "process":
                api_peak_mb.extend(_api_child_peak_mb())
            stop.set()
        if not loaded[mode]:
            raise RuntimeError(f"{mode} loop: the backlog of {backlog} events ran out; raise it")

    if api_peak_mb:
        report.add(
            Figure(
                "API process peak RSS",
                "MB",
                api_peak_mb,
                note="the `recsys serve` child of `recsys run` after the loaded runs (VmHWM)",
            )
        )

    def fig(name: str, unit: str, rows: list[dict[str, Any]], key: str, note: str = "") -> Figure:
        return report.add(Figure(name, unit, [r[key] for r in rows], note=note))

    t_rps = fig("trivial endpoint", "req/s", trivial, "rps")
    fig("trivial endpoint p50", "ms", trivial, "p50_ms")
    t_p99 = fig("trivial endpoint p99", "ms", trivial, "p99_ms")
    r_rps = fig("recommendations alone", "req/s", alone, "rps", note="stream path: 1 PostgreSQL round trip")
    fig("recommendations alone p50", "ms", alone, "p50_ms")
    r_p99 = fig("recommendations alone p99", "ms", alone, "p99_ms")
    report.ratio("rps: recommendations / trivial", r_rps, t_rps, note="headline: cost of the real route")
    report.ratio("p99: recommendations / trivial", r_p99, t_p99)
    labels = (
        ("shared", "shared loop"),
        ("own", "API on its own loop"),
        ("process", "API in its own process"),
    )
    for shown, label in labels:
        rows = loaded[shown]
        l_rps = fig(f"+ consumer, {label}", "req/s", rows, "rps")
        fig(f"+ consumer, {label} p50", "ms", rows, "p50_ms")
        l_p99 = fig(f"+ consumer, {label} p99", "ms", rows, "p99_ms")
        report.add(Figure(f"consumer events/s, {label}", "events/s", consumed[shown], note="during the load"))
        # runs under load may be fewer than runs alone (dropped when the backlog ran out): per-run
        # figures against the median alone
        for what, num, den, note in (
            ("rps", l_rps, r_rps, ""),
            ("p99", l_p99, r_p99, "headline: tail under load"),
        ):
            ref = statistics.median(den.runs)
            runs_x = [v / ref for v in num.runs]
            report.add(
                Figure(f"{what}: + consumer ({label}) / alone", "x", runs_x, reference=den.name, note=note)
            )
    report.scale.update(
        {
            "duration_s": duration,
            "runs": runs,
            "connections": CONNECTIONS,
            "backlog_events": backlog,
            "median_consumer_events_per_s": {m: round(statistics.median(v), 1) for m, v in consumed.items()},
        }
    )


def main(quick: bool) -> None:
    bench_stack()
    prepared = prepared_model(1.0)
    report = Report("api", scale={"quick": quick})
    run_async(_measure(quick, report, prepared))
    report.print()
    print(f"  wrote {report.write()}")
    print(json.dumps({f.name: round(f.median, 3) for f in report.figures}))
