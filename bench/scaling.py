"""How cost grows: consumer events/s and peak RSS against catalog size and shard count.

Catalogs: the trained scale-1 model (``prepared_model``) with its item table grown to 1k, 10k and
100k items -- the 110 real items plus random L2-normalised 32-d vectors -- each loaded as its own
version with ``model_store.loader.load_bundle_into`` (binary COPY, the HNSW index, exact
neighbours, atomic switch) into a separate database (``bench_scaling``) of the bench stack, so other
benchmarks' active model is never switched under them. Loaded versions are reused between runs.

Each measurement is a child process (``python -m bench.scaling --child ...``) that creates a fresh
moto Kinesis stream with the given shard count, puts N events, and runs the real ``Consumer``
(``ModelRecommender``, Firehose to moto S3, the latest table, leases and checkpoints in PostgreSQL)
until all N are delivered: events/s from the consumer's start (lease take included), and the
child's peak RSS (``VmHWM`` read by the child at the end; ``ru_maxrss`` from ``wait4`` would carry
the parent's peak across fork + exec, and the parent grows while it builds a 100k catalog). The vectors
live in PostgreSQL, so the table + index size is reported too: that is where the catalog's memory
goes. Catalog sweep at 2 shards; shard sweep (1, 2, 4) at 10k items; one consumer process.

The candidate cache (``consumer.cache_keys``) is on in every run but one: the 100k catalog at 2
shards runs a second time with it off, so its before/after is measured side by side (the
recommend stage's ms/event, and the candidate hit rate of the cached run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np

from bench._harness import Figure, Report, peak_rss_mb, prepared_model, run_async

DB = "bench_scaling"


def _version(items: int) -> str:
    """Named with the loader's index parameters, so a change of them loads the catalog afresh."""
    from model_store.loader import HNSW_EF_CONSTRUCTION, HNSW_M

    return f"bench-items-{items:07d}-m{HNSW_M}-efc{HNSW_EF_CONSTRUCTION}"


async def _ensure_version(url: str, artifacts: str, items: int) -> float:
    """Load (or re-activate) the catalog of ``items`` items; return its table + index size in MB."""
    from infra.objectstore import open_store
    from infra.pg import connect, migrate
    from model_store.artifacts import load_bundle
    from model_store.loader import load_bundle_into, table_names

    await migrate(url)
    base = load_bundle(open_store(artifacts))
    conn = await connect(url, timeout_s=30)
    try:
        version = _version(items)
        known = await conn.fetchval("SELECT count(*) FROM model_versions WHERE version = $1", version)
        if known:
            bundle = replace(base, version=version)  # already loaded: load_bundle_into just switches
        else:
            extra = items - len(base.item_ids)
            rng = np.random.default_rng(items)
            noise = rng.standard_normal((extra, base.item_vectors.shape[1])).astype(np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            bundle = replace(
                base,
                version=version,
                item_ids=[*base.item_ids, *(f"B{i:07d}" for i in range(extra))],
                item_vectors=np.vstack([base.item_vectors, noise]),
            )
            print(f"  loading a {items}-item catalog ...", flush=True)
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await load_bundle_into(conn, bundle, keep=10)
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table_names(version)[0])
    finally:
        await conn.close()
    return float(size) / 2**20


async def _create_db(admin_url: str) -> str:
    from bench._harness import create_database

    await create_database(admin_url, DB)
    return admin_url.rsplit("/", 1)[0] + "/" + DB


def _child(url: str, shards: int, events: int, cache_keys: int) -> None:
    """In the child: fresh stream, N events put, our Consumer until all are delivered."""
    from bench.lab_reference import (
        consume_all,
        consumer_settings,
        drop_fresh_streams,
        fresh_streams,
        put_events,
        stage_totals,
    )
    from consumer.producer import make_event
    from infra.logs import configure_logging

    configure_logging("WARNING")
    import random

    rng = random.Random(3)
    codes = [f"S{10 + p % 90}_{1000 + p}" for p in range(110)]

    class Customer:
        def __init__(self, n: int) -> None:
            self.customer_number = 100 + n
            self.city = f"City {n % 20}"
            self.country = ("USA", "France", "Germany", "Spain", "Japan")[n % 5]
            self.credit_limit = float(20_000 + 1000 * n)

    customers = [Customer(n) for n in range(122)]
    payloads = [json.dumps(make_event(rng, rng.choice(customers), codes)).encode() for _ in range(events)]
    stream, delivery, bucket = fresh_streams(shards)
    put_events(stream, payloads)
    settings = consumer_settings(stream, delivery, bucket, cache_keys=cache_keys)
    try:
        seconds = asyncio.run(consume_all(url, settings, events))
    finally:
        drop_fresh_streams()
    stages = stage_totals()  # this child's process: the totals are this run's
    result = {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "recommend_s": stages["recommend"],
        "candidate_hit_rate": _hit_rate(),
    }
    print(json.dumps(result), flush=True)


def _hit_rate() -> float:
    from prometheus_client import REGISTRY

    def count(result: str) -> float:
        labels = {"cache": "candidates", "result": result}
        return REGISTRY.get_sample_value("recsys_consumer_cache_lookups_total", labels) or 0.0

    hits, misses = count("hit"), count("miss")
    return hits / (hits + misses) if hits + misses else 0.0


def _measure(url: str, shards: int, events: int, cache_keys: int) -> tuple[float, float, float, float]:
    """(events/s, peak RSS MB, ms per event in the recommend stage, candidate hit rate) of one child."""
    cmd = [sys.executable, "-m", "bench.scaling", "--child", url, str(shards), str(events), str(cache_keys)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    if proc.wait() != 0:
        raise RuntimeError(f"the scaling child failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return (
        events / float(result["seconds"]),
        float(result["peak_rss_mb"]),
        1000 * float(result["recommend_s"]) / events,
        float(result["candidate_hit_rate"]),
    )


def main(quick: bool) -> None:
    catalogs = (1_000, 10_000, 100_000)
    shard_counts = (1, 2, 4)
    events = 1000 if quick else 3000
    runs = 1 if quick else 3
    prepared = prepared_model(1.0)
    url = run_async(_create_db(prepared.database_url))
    report = Report(
        "scaling",
        scale={"catalogs": list(catalogs), "shards": list(shard_counts), "events": events, "runs": runs},
    )
    from recsys.settings import ConsumerSettings

    cache_keys = ConsumerSettings().cache_keys
    rate: dict[tuple[int, int], Figure] = {}
    rss: dict[tuple[int, int], Figure] = {}
    recommend: dict[tuple[int, int], Figure] = {}
    plan = [(items, 2) for items in catalogs] + [(10_000, s) for s in shard_counts if s != 2]
    for items, shards in plan:
        size = run_async(_ensure_version(url, prepared.artifacts, items))
        label = f"{items // 1000}k items, {shards} shard{'s' if shards > 1 else ''}"
        if (items, shards) == (100_000, 2):  # the cache's before/after, interleaved run by run
            pairs = [
                (_measure(url, shards, events, 0), _measure(url, shards, events, cache_keys))
                for _ in range(runs)
            ]
            off = report.add(
                Figure(f"{label}, cache off: recommend stage", "ms/event", [p[0][2] for p in pairs])
            )
            off_rate = report.add(
                Figure(f"{label}, cache off: events/s", "events/s", [p[0][0] for p in pairs])
            )
            measured = [p[1] for p in pairs]
        else:
            measured = [_measure(url, shards, events, cache_keys) for _ in range(runs)]
        rate[items, shards] = report.add(Figure(f"{label}: events/s", "events/s", [m[0] for m in measured]))
        rss[items, shards] = report.add(Figure(f"{label}: peak RSS", "MB", [m[1] for m in measured]))
        recommend[items, shards] = report.add(
            Figure(f"{label}: recommend stage", "ms/event", [m[2] for m in measured])
        )
        report.add(Figure(f"{label}: candidate cache hit rate", "", [m[3] for m in measured]))
        if shards == 2:
            report.add(Figure(f"{items // 1000}k items: item table + index", "MB", [size]))
    report.ratio(
        "events/s 100k / 1k items", rate[100_000, 2], rate[1_000, 2], note="1.0 = flat in catalog size"
    )
    report.ratio(
        "recommend stage 100k / 1k items",
        recommend[100_000, 2],
        recommend[1_000, 2],
        note="one HNSW scan per distinct user per batch",
    )
    report.ratio(
        "recommend stage 100k items, cache on / off",
        recommend[100_000, 2],
        off,
        note="the candidate cache's before/after (lower = faster)",
    )
    report.ratio("events/s 100k items, cache on / off", rate[100_000, 2], off_rate)
    report.ratio(
        "peak RSS 100k / 1k items", rss[100_000, 2], rss[1_000, 2], note="the vectors live in PostgreSQL"
    )
    report.ratio("events/s 4 / 1 shards", rate[10_000, 4], rate[10_000, 1], note="one consumer process")
    report.ratio("events/s 2 / 1 shards", rate[10_000, 2], rate[10_000, 1])
    report.print()
    print(f"  wrote {report.write()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--child", nargs=4, metavar=("DATABASE_URL", "SHARDS", "EVENTS", "CACHE_KEYS"), required=True
    )
    args = parser.parse_args()
    _child(args.child[0], int(args.child[1]), int(args.child[2]), int(args.child[3]))
