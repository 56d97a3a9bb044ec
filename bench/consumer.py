"""The streaming consumer end to end: events/s from a pre-filled Kinesis stream to Firehose -> S3,
and how it scales with the number of shards (1, 2, 4) in one consumer process.

Setup per run: a fresh moto stream with S shards holding N events (PutRecords, 500 per call), a fresh
Firehose delivery stream to a moto bucket, the embedded PostgreSQL for leases, checkpoints and the
latest-recommendations table. The clock runs from ``Consumer.run`` until ``stats.delivered == N``
(start-up included: ListShards, the first lease take). The recommender is an in-process fake that
answers instantly, so the figures are the consumer's own cost (Kinesis reads, JSON, Firehose
batches, PostgreSQL writes) and moto's; the full run adds the real ``ModelRecommender`` (the
project's trained model on the bench stack) on 2 shards.

Headline ratios: events/s with 2 and 4 shards over 1 shard, measured in the same run; and (full
run) the real recommender's events/s over the fake one's on 2 shards.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from bench._harness import Figure, Report, bench_stack, prepared_model, run_async
from recsys.testing import FakeRecommender

SHARD_COUNTS = (1, 2, 4)
TARGET_CPU_US = 100.0


def _fill(stream: str, shards: int, count: int) -> None:
    from consumer.setup import ensure_stream
    from infra.aws import sync_client

    ensure_stream(stream, shards)
    client = sync_client("kinesis")
    for start in range(0, count, 500):
        records = []
        for i in range(start, min(count, start + 500)):
            event = {
                "session_id": f"b{i}",
                "customer_number": 103 + i % 120,
                "city": "Nantes",
                "country": "France",
                "credit_limit": 21000.0,
                "browse_history": [
                    {"product_code": "S10_1678", "quantity": 2, "in_shopping_cart": True},
                    {"product_code": "S18_2238", "quantity": "1", "in_shopping_cart": False},
                ],
            }
            records.append({"PartitionKey": str(event["customer_number"]), "Data": orjson.dumps(event)})
        resp = client.put_records(StreamName=stream, Records=records)
        if resp["FailedRecordCount"]:
            raise RuntimeError("moto rejected records while filling the stream")


@dataclass
class Run:
    """One consumer run over ``count`` events."""

    events_per_s: float
    cpu_us: float  # consumer process CPU per event, from building the consumer to the last delivery
    steady_cpu_us: float  # the same from the first delivery on (start-up's one-off costs left out)
    firehose_records: int
    firehose_calls: int


async def _consume(
    database_url: str, stream: str, delivery: str, count: int, recommender: Any, *, pack_bytes: int | None
) -> Run:
    from infra.pg import pool
    from recsys import runtime
    from recsys.settings import ConsumerSettings, Settings

    tuning: dict[str, Any] = {
        "lease_take_interval_s": 0.3,
        "lease_renew_interval_s": 1.0,
        "poll_interval_s": 0.2,
    }
    if pack_bytes is not None:
        tuning["firehose_pack_bytes"] = pack_bytes
    settings = Settings(
        stream=stream,
        delivery_stream=delivery,
        dead_letters=f"s3://bench-consumer/dead/{stream}",
        consumer=ConsumerSettings(**tuning),
    )
    async with pool(database_url, min_size=2, max_size=10) as pg:
        rec = recommender if recommender is not None else await _real(pg)
        stop = asyncio.Event()
        started = time.perf_counter()  # from building the consumer (its AWS clients included)
        cpu_started = time.process_time()
        cpu_first: tuple[float, int] | None = None
        async with runtime.consumer(settings, pool=pg, recommender=rec, suppression=None) as consumer:
            task = asyncio.create_task(consumer.run(stop), name="bench-consumer")
            try:
                while consumer.stats.delivered < count:
                    if task.done():
                        task.result()
                        raise RuntimeError("the consumer stopped early")
                    if time.perf_counter() - started > 600:
                        raise RuntimeError(f"only {consumer.stats.delivered}/{count} delivered in 600 s")
                    if cpu_first is None and consumer.stats.delivered:
                        cpu_first = (time.process_time(), consumer.stats.delivered)
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
                cpu_end = time.process_time()
            finally:
                stop.set()
                await task
                if recommender is None:
                    await rec.close()
            sink = consumer._sink  # the benchmark reads the sink's counters
    first_cpu, first_delivered = cpu_first or (cpu_started, 0)
    return Run(
        events_per_s=count / elapsed,
        cpu_us=(cpu_end - cpu_started) / count * 1e6,
        steady_cpu_us=(cpu_end - first_cpu) / max(1, count - first_delivered) * 1e6,
        firehose_records=int(getattr(sink, "records", 0)),
        firehose_calls=int(getattr(sink, "calls", 0)),
    )


async def _real(pg: Any) -> Any:
    from model_store.recommender import ModelRecommender

    return await ModelRecommender.open(pg)


def _run(
    database_url: str,
    delivery: str,
    shards: int,
    count: int,
    recommender: Any,
    *,
    pack_bytes: int | None = None,
) -> Run:
    """One run on a fresh stream of ``shards`` shards holding ``count`` events."""
    from infra.aws import sync_client

    stream = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    _fill(stream, shards, count)
    try:
        return run_async(_consume(database_url, stream, delivery, count, recommender, pack_bytes=pack_bytes))
    finally:
        sync_client("kinesis").delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def _delivery_stream() -> str:
    """One Firehose delivery stream per benchmark run (moto allows 50 per account)."""
    from consumer.setup import ensure_delivery_stream

    name = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    ensure_delivery_stream(name, f"s3://bench-consumer/out/{name}")
    return name


def _fake() -> Any:
    return FakeRecommender("bench-fake", items=10)


def _measure(report: Report, *, database_url: str, delivery: str, count: int, runs: int, quick: bool) -> None:
    # a warm-up run: the process's one-off imports and botocore's first service-model loads
    _run(database_url, delivery, 2, min(count, 1000), _fake())
    results: dict[int, list[Run]] = {n: [] for n in SHARD_COUNTS}
    unpacked: list[Run] = []
    for _ in range(runs):  # interleaved, so a noisy neighbour hits every configuration alike
        for shards in SHARD_COUNTS:
            results[shards].append(_run(database_url, delivery, shards, count, _fake()))
        unpacked.append(_run(database_url, delivery, 2, count, _fake(), pack_bytes=0))
    per_shards = {
        n: report.add(
            Figure(
                f"events/s, fake recommender, {n} shard(s)", "events/s", [r.events_per_s for r in results[n]]
            )
        )
        for n in SHARD_COUNTS
    }
    steady = {}
    for n in SHARD_COUNTS:
        steady[n] = report.add(
            Figure(
                f"consumer CPU per event, {n} shard(s)",
                "us",
                [r.steady_cpu_us for r in results[n]],
                note="headline (2 shards); the consumer process only, from its first delivery on",
            )
        )
        report.add(
            Figure(
                f"  the same with start-up, {n} shard(s)",
                "us",
                [r.cpu_us for r in results[n]],
                note="from building the consumer (AWS clients, leases)",
            )
        )
    two = results[2]
    report.add(
        Figure("Firehose records per event, 2 shards", "", [r.firehose_records / count for r in two]),
    )
    report.add(
        Figure("PutRecordBatch calls per event, 2 shards", "", [r.firehose_calls / count for r in two])
    )
    one_each = report.add(
        Figure(
            "consumer CPU per event, 2 shards, one event per Firehose record",
            "us",
            [r.steady_cpu_us for r in unpacked],
            note="RECSYS_CONSUMER__FIREHOSE_PACK_BYTES=0",
        )
    )
    report.add(
        Figure(
            "  Firehose records per event, one event per record",
            "",
            [r.firehose_records / count for r in unpacked],
        )
    )
    report.ratio(
        "CPU per event: packed / one event per record", steady[2], one_each, note="2 shards, same run"
    )
    target = report.add(Figure("CPU per event target", "us", [TARGET_CPU_US] * runs))
    report.ratio(
        "CPU per event (2 shards) / target", steady[2], target, note="headline: < 1 is within 100 us"
    )
    for shards in SHARD_COUNTS[1:]:
        report.ratio(
            f"{shards} shards vs 1 shard",
            per_shards[shards],
            per_shards[1],
            note="one consumer process; moto and PostgreSQL on the same cores",
        )
    if not quick:
        prepared = prepared_model()
        real_runs = [_run(prepared.database_url, delivery, 2, count, None) for _ in range(runs)]
        real = report.add(
            Figure("events/s, ModelRecommender, 2 shards", "events/s", [r.events_per_s for r in real_runs])
        )
        report.add(
            Figure(
                "consumer CPU per event, ModelRecommender, 2 shards",
                "us",
                [r.steady_cpu_us for r in real_runs],
                note="the trained model's forward (NumPy) and pgvector queries included",
            )
        )
        report.ratio("real model vs fake recommender (2 shards)", real, per_shards[2])


def _profile(database_url: str, delivery: str, count: int) -> None:
    """``RECSYS_BENCH_PROFILE=1 python -m bench consumer``: one 2-shard run (after a warm-up)
    under pyinstrument (a dev dependency); prints the call tree of the consumer's process."""
    from pyinstrument import Profiler

    from infra.aws import sync_client

    _run(database_url, delivery, 2, min(count, 1000), _fake())
    stream = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    _fill(stream, 2, count)  # not profiled: the stream is filled before the consumer starts
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        run = run_async(_consume(database_url, stream, delivery, count, _fake(), pack_bytes=None))
    finally:
        profiler.stop()
        sync_client("kinesis").delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    rate, cpu = run.events_per_s, run.steady_cpu_us
    print(f"  {count} events, 2 shards: {rate:.0f} events/s, {cpu:.1f} us CPU per event (profiled)")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main(quick: bool) -> Report:
    from infra.aws import sync_client
    from infra.pg import migrate

    count = 2_000 if quick else 10_000
    runs = 1 if quick else 3
    info = bench_stack()
    run_async(migrate(info.database_url))
    report = Report("consumer", scale={"events": count, "runs": runs, "shards": list(SHARD_COUNTS)})
    delivery = _delivery_stream()
    try:
        if os.environ.get("RECSYS_BENCH_PROFILE"):
            _profile(info.database_url, delivery, count)
            return report
        _measure(
            report, database_url=info.database_url, delivery=delivery, count=count, runs=runs, quick=quick
        )
    finally:
        sync_client("firehose").delete_delivery_stream(DeliveryStreamName=delivery, AllowForceDelete=True)
    report.print()
    report.write()
    return report
