"""``recsys demo``: the whole product on the embedded stack, from nothing, with one command.

Stages (each reused when already done): the embedded stack, migrations, the shop data, the ETL into
the lake, training into the artifact store, loading the vectors, the stream and the delivery stream;
then the consumer and the API in this process, and a producer putting browsing events.

``--events N`` puts N events, waits until every one is delivered to S3 and visible through the API,
prints a summary (events in, records delivered, dead letters, put-to-API-visible latency p50/p99),
writes it to ``<state dir>/demo-summary.json`` and exits 0, or 3 when anything is missing. Without
it, events flow until Ctrl-C. The stack is left running either way (``recsys stack down`` stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from core.errors import InfraError, NotFoundError
from infra.urls import redact_url
from recsys import bootstrap
from recsys.commands._common import add_command, flag, run_async, settings_from, stop_on_signals
from recsys.settings import Settings
from recsys.visibility import Sent, Tracker, percentile, watch_api

if TYPE_CHECKING:
    from recsys.runtime import Running

__all__ = ["register"]

LAKE = "s3://recsys-lake/lake"
ARTIFACTS = "s3://recsys-artifacts/ml-artifacts"
DELIVERY = "s3://recsys-delivery/recommendations"
DEAD_LETTERS = "s3://recsys-delivery/dead-letters"
INCOMPLETE = 3  # exit code: the run finished but something is missing


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "demo",
        "everything on the embedded stack: seed, ETL, train, load, stream, consume, serve",
        "Bring up the embedded stack and run the whole product on it, reusing every stage already "
        "done. With --events N: put N events through, print a summary and exit (3 if anything is "
        "missing). Without: run until Ctrl-C. The stack stays up; `recsys stack down` stops it.",
    )
    flag(parser, "--events", "put this many events through, check them, print a summary, exit", type=int)
    flag(
        parser,
        "--rate",
        "events per second the producer puts (default: 50 with --events, else 5)",
        type=float,
    )
    flag(parser, "--host", "API address", metavar="HOST")
    flag(parser, "--port", "API port (default 8000, or a free one when 8000 is taken)", type=int)
    parser.set_defaults(func=_run)


# ---------------------------------------------------------------------------------------- output
_T0 = time.monotonic()


def say(stage: str, message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {stage:<14} {message}", flush=True)


# ---------------------------------------------------------------------------------------- batch stages
def _prepare(settings: Settings) -> tuple[Settings, str]:
    """Stack, migrations, shop data, lake, artifacts, vectors, streams. Returns (settings, source URL)."""
    from consumer.setup import ensure_delivery_stream, ensure_stream
    from infra.objectstore import S3Store, open_store
    from infra.pg import migrate

    info = bootstrap.ensure_local_stack(settings)
    bootstrap.use_local_aws(info)
    shown = redact_url(info.database_url)
    say("stack", f"PostgreSQL {shown}, moto {info.aws_endpoint_url} ({info.state_dir})")
    url, source = info.database_url, info.source_url

    applied = run_async(migrate(url))
    say("migrate", f"applied {len(applied)} migration(s)" if applied else "up to date")

    from etl.seed import seed

    summary = seed(source, scale=1.0)
    created = summary.customers_created + summary.products_created + summary.ratings_written
    say(
        "seed",
        f"{'seeded' if created else 'reused'} shop data: {summary.customers_total} customers, "
        f"{summary.products_total} products ({summary.ratings_written} ratings written)",
    )

    for uri in (LAKE, ARTIFACTS, DELIVERY):
        store = open_store(uri)
        if isinstance(store, S3Store):
            store.ensure_bucket()

    from infra.lake import latest_run

    try:
        run = latest_run(open_store(LAKE))
        say("etl", f"reused lake run {run.run_id} ({run.row_count} rows) in {LAKE}")
    except NotFoundError:
        from etl.pipeline import run_etl

        etl = run_etl(source, LAKE)
        say("etl", f"wrote lake run {etl.run_id}: {etl.rows} rows in {etl.seconds:.1f}s -> {LAKE}")

    from model_store.artifacts import resolve_version

    try:
        version = resolve_version(open_store(ARTIFACTS), None)
        say("train", f"reused artifact version {version} in {ARTIFACTS}")
    except NotFoundError:
        from model_store.training import train

        say("train", "training the two-tower model (a minute or so on 2 CPU cores)...")
        trained = train(LAKE, ARTIFACTS, settings.train)
        version = trained.version
        shown = ", ".join(f"{k}={v:.3f}" for k, v in list(trained.metrics.items())[:4])
        say("train", f"version {version} in {trained.seconds:.1f}s ({shown}) -> {ARTIFACTS}")

    from model_store.loader import load_vectors

    loaded = run_async(load_vectors(url, ARTIFACTS, version, recall_target=settings.recall_target))
    state = "already active" if loaded.already_loaded else f"loaded in {loaded.seconds:.1f}s"
    say("load-vectors", f"version {loaded.version}: {loaded.items} items, {loaded.users} users, {state}")

    fresh = not _stream_exists(settings.stream)
    ensure_stream(settings.stream, shards=2)
    if fresh:  # a recreated stream (moto forgets on restart): its old checkpoints mean nothing
        run_async(_forget_checkpoints(url, settings.stream))
    ensure_delivery_stream(settings.delivery_stream, DELIVERY)
    say(
        "streams", f"Kinesis {settings.stream} (2 shards), Firehose {settings.delivery_stream} -> {DELIVERY}/"
    )

    port = settings.port if _port_free(settings.host, settings.port) else 0
    ready = settings.model_copy(
        update={"database_url": SecretStr(url), "dead_letters": DEAD_LETTERS, "port": port}
    )
    return ready, source


def _stream_exists(name: str) -> bool:
    from infra.aws import map_client_error, sync_client

    try:
        sync_client("kinesis").describe_stream_summary(StreamName=name)
    except Exception as exc:
        if isinstance(map_client_error(exc, "describe"), NotFoundError):
            return False
        raise map_client_error(exc, f"describing stream {name}") from exc
    return True


async def _forget_checkpoints(url: str, stream: str) -> None:
    from infra.pg import connect

    conn = await connect(url)
    try:
        await conn.execute("DELETE FROM kinesis_leases WHERE stream = $1", stream)
    finally:
        await conn.close()


def _port_free(host: str, port: int) -> bool:
    from service.server import bind_socket

    try:
        bind_socket(host, port).close()
    except InfraError:
        return False
    return True


# ---------------------------------------------------------------------------------------- live part
async def _produce(
    settings: Settings,
    source: str,
    tracker: Tracker,
    *,
    count: int | None,
    rate: float,
    stop: asyncio.Event,
) -> None:
    """Put events at ``rate``/s (``count`` of them, or until ``stop``), recording each put time."""
    from consumer.producer import ProduceSummary, make_event, put_records
    from etl.source import load_catalog
    from infra.aws import sync_client

    catalog = await asyncio.to_thread(load_catalog, source)
    client = sync_client("kinesis")
    rng = random.Random(time.time_ns())
    summary = ProduceSummary()
    chunk = max(1, int(rate / 10))
    started = time.monotonic()
    while not stop.is_set() and (count is None or summary.sent < count):
        n = chunk if count is None else min(chunk, count - summary.sent)
        events = [make_event(rng, rng.choice(catalog.customers), catalog.product_codes) for _ in range(n)]
        entries = [
            {"PartitionKey": str(e["customer_number"]), "Data": json.dumps(e).encode()} for e in events
        ]
        placed = await asyncio.to_thread(put_records, client, settings.stream, entries, summary, rng)
        at = time.time()
        summary.sent += n
        tracker.add(
            [
                Sent(f"{shard}:{seq}", int(e["customer_number"]), at)
                for e, (shard, seq) in zip(events, placed, strict=True)
            ]
        )
        ahead = summary.sent / rate - (time.monotonic() - started)
        if ahead > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ahead)


def _delivered_ids(seen_keys: set[str], ids: dict[str, int]) -> int:
    """Read new objects under DELIVERY; count every record's event id into ``ids``. Returns bad lines."""
    from infra.objectstore import open_store

    store = open_store(DELIVERY)
    bad = 0
    for key in store.list():
        if key in seen_keys or key.startswith("errors/"):
            continue
        seen_keys.add(key)
        for line in store.get_bytes(key).splitlines():
            if not line.strip():
                continue
            try:
                event_id = json.loads(line)["event_id"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            ids[event_id] = ids.get(event_id, 0) + 1
    return bad


async def _events_run(settings: Settings, source: str, up: Running, count: int, rate: float) -> int:
    tracker = Tracker()
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_api(up.url, tracker, done), name="demo-watch")
    say("produce", f"putting {count} events at {rate:g}/s onto {settings.stream}")
    await _produce(settings, source, tracker, count=count, rate=rate, stop=up.stop)
    say("produce", f"{len(tracker.sent)} events put; waiting for delivery and the API")

    deadline = time.monotonic() + 60 + count / 20
    delivered: dict[str, int] = {}
    keys: set[str] = set()
    bad = 0
    wanted = {s.event_id for s in tracker.sent}
    last_note = 0.0
    while time.monotonic() < deadline and not up.stop.is_set():
        bad += await asyncio.to_thread(_delivered_ids, keys, delivered)
        if not tracker.pending and wanted <= delivered.keys():
            break
        if time.monotonic() - last_note > 5:
            last_note = time.monotonic()
            stats = up.consumer.stats
            say(
                "progress",
                f"consumed {stats.records_in}, delivered {stats.delivered}, "
                f"visible in the API {len(tracker.latency_s)}/{len(tracker.sent)}",
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.stop.wait(), 0.25)
    done.set()
    await watcher

    browsed = sorted({s.customer for s in tracker.sent})
    answered = 0
    import httpx

    async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
        for customer in browsed:
            resp = await client.get(f"/recommendations/{customer}")
            answered += resp.status_code == 200 and resp.json().get("source") == "stream"

    found = wanted & delivered.keys()
    duplicates = sum(delivered[i] - 1 for i in found)
    lat = list(tracker.latency_s.values())
    stats = up.consumer.stats
    summary: dict[str, Any] = {
        "events_in": len(tracker.sent),
        "records_delivered": len(found),
        "duplicates": duplicates,
        "malformed_lines": bad,
        "dead_letters": stats.dead_lettered,
        "customers_browsed": len(browsed),
        "customers_answered": answered,
        "visible_in_api": len(lat),
        "latency_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "latency_p99_ms": round(1000 * percentile(lat, 0.99), 1) if lat else None,
        "delivery": f"{DELIVERY}/",
        "api": up.url,
        "event_ids": sorted(wanted),
        "customers": browsed,
    }
    ok = (
        len(found) == len(wanted) == count
        and answered == len(browsed)
        and len(lat) == count
        and stats.dead_lettered == 0
        and bad == 0
    )
    summary["ok"] = ok
    (settings.state_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    print("\nsummary", flush=True)
    print(f"  events in             {summary['events_in']}")
    print(
        f"  records delivered     {len(found)}/{len(wanted)} unique event ids in {DELIVERY}/ "
        f"({duplicates} duplicates)"
    )
    print(f"  dead letters          {stats.dead_lettered}")
    print(f"  API answers           {answered}/{len(browsed)} customers that browsed (source=stream)")
    if lat:
        print(
            f"  put -> API visible    p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms "
            f"({len(lat)} events)"
        )
    else:
        print("  put -> API visible    no event became visible")
    print(f"  written to            {settings.state_dir / 'demo-summary.json'}")
    if not ok:
        print("  INCOMPLETE: something above is missing", flush=True)
    return 0 if ok else INCOMPLETE


async def _forever(settings: Settings, source: str, up: Running, rate: float) -> None:
    tracker = Tracker()
    producer = asyncio.create_task(
        _produce(settings, source, tracker, count=None, rate=rate, stop=up.stop), name="demo-produce"
    )
    while not up.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.wait(), 10)
        stats = up.consumer.stats
        say(
            "progress",
            f"put {len(tracker.sent)}, consumed {stats.records_in}, delivered {stats.delivered}, "
            f"dead letters {stats.dead_lettered}",
        )
        if producer.done():
            break
    await producer


def _banner(up: Running) -> None:
    print(
        f"""
  API            {up.url}
    try          curl {up.url}/recommendations/103
    docs         {up.url}/docs
  metrics        {up.url}/metrics
  deliveries     {DELIVERY}/  (aws --endpoint-url "$AWS_ENDPOINT_URL" s3 ls {DELIVERY}/ --recursive)
  dead letters   {DEAD_LETTERS}/
""",
        flush=True,
    )


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.database_url is not None:
        say("demo", "RECSYS_DATABASE_URL is ignored: the demo runs on the embedded stack")
        settings = settings.model_copy(update={"database_url": None})
    count = None if args.events is None else int(args.events)
    if count is not None and count < 1:
        from core.errors import ConfigError

        raise ConfigError("--events must be at least 1")
    rate = float(args.rate) if args.rate is not None else (50.0 if count is not None else 5.0)
    import logging

    for chatty in ("httpx", "uvicorn.error"):  # the demo prints its own progress
        logging.getLogger(chatty).setLevel(logging.WARNING)
    ready, source = _prepare(settings)

    async def live() -> int:
        from recsys import runtime

        stop = asyncio.Event()
        code = 0
        with stop_on_signals(stop):
            async with runtime.running(ready, stop) as up:
                say("run", "consumer and API started")
                _banner(up)
                if count is not None:
                    code = await _events_run(ready, source, up, count, rate)
                else:
                    say("run", f"putting {rate:g} events/s; Ctrl-C stops")
                    await _forever(ready, source, up, rate)
                say("run", "stopping: the consumer drains, then the API")
        return code

    code = run_async(live())
    print(
        f"\nthe embedded stack keeps running (state in {ready.state_dir}); stop it with `recsys stack down`"
    )
    return code
