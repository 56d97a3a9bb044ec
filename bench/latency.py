"""Put-to-visible latency: PutRecords acknowledged -> ``GET /recommendations/{customer}`` shows the event.

Wiring as ``recsys run``: ``recsys.runtime.running`` starts the Consumer and the API (the default
API loop: a child process) on the bench stack's moto Kinesis/Firehose and embedded PostgreSQL. A
producer puts browsing events at a steady rate onto a fresh 2-shard stream (PutRecords every
100 ms), and a watcher polls the API (4 requests in flight) for every customer with an event not
yet visible. An event is visible when the API's ``event_id`` is that event's
``<shard>:<sequence>`` or a later event of the same customer (same partition key, so same shard,
so ordered). The time is taken when the API's answer arrives, so it includes the watcher's own
polling delay (a few ms while the API is idle).

Two configurations run at the same time, so that both see the same load: the poll interval the
consumer had before (0.25 s) and the default consumer settings (0.2 s: Kinesis's five GetRecords a
second per shard), each on its own stream, with its own producer, watcher and ``recsys run`` graph
(consumer in this process, API in its own child process). A warm-up (the consumer taking its
leases, the first events through) is not measured. The steady phase is split into windows; each
window gives one p50 and one p99 (the figure's runs). The consumers' stage histogram
(``recsys_consumer_stage_seconds``, both together) is printed as milliseconds per call. Headline: the
default's p50 and p99 over the earlier setting's, same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from bench._harness import Figure, Report, percentile, prepared_model, run_async


@dataclass
class Tracker:
    pending: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # customer -> (id, put at)
    latency: list[tuple[float, float]] = field(default_factory=list)  # (put at, seconds to visible)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when nothing is pending

    def add(self, customer: int, event_id: str, at: float) -> None:
        self.pending.setdefault(customer, []).append((event_id, at))
        self.idle.clear()

    async def settle(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout_s)

    def seen(self, customer: int, event_id: str | None, at: float) -> None:
        waiting = self.pending.get(customer)
        if not waiting or event_id is None:
            return
        ids = [e for e, _ in waiting]
        if event_id not in ids:
            return
        upto = ids.index(event_id) + 1
        self.latency.extend((put, at - put) for _, put in waiting[:upto])
        del waiting[:upto]
        if not waiting:
            del self.pending[customer]
            if not self.pending:
                self.idle.set()


async def _produce(
    stream: str, catalog: Any, customers: list[Any], tracker: Tracker, *, rate: float, seconds: float
) -> None:
    from consumer.producer import ProduceSummary, make_event, put_records
    from infra.aws import sync_client

    client = sync_client("kinesis")
    rng = random.Random(7)
    summary = ProduceSummary()
    tick = 0.1
    per_tick = max(1, round(rate * tick))
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        events = [make_event(rng, rng.choice(customers), catalog.product_codes) for _ in range(per_tick)]
        entries = [
            {"PartitionKey": str(e["customer_number"]), "Data": json.dumps(e).encode()} for e in events
        ]
        placed = await asyncio.to_thread(put_records, client, stream, entries, summary, rng)
        at = time.monotonic()
        for e, (shard, seq) in zip(events, placed, strict=True):
            tracker.add(int(e["customer_number"]), f"{shard}:{seq}", at)
        n += per_tick
        ahead = n / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def _watch(url: str, tracker: Tracker, stop: asyncio.Event) -> None:
    from recsys.visibility import watch_api

    await watch_api(url, tracker, stop, clock=time.monotonic, idle_s=0.005)


async def _run(
    prepared: Any, rate: float, windows: int, window_s: float, *, poll_s: float | None, share: tuple[int, int]
) -> tuple[list[list[float]], Any]:
    """``share`` (i, n): this configuration's events come from every n-th customer from the i-th, so
    that configurations running at once never write the same customer's latest row."""
    from pydantic import SecretStr

    from bench.lab_reference import fresh_streams
    from etl.source import load_catalog
    from recsys.runtime import running
    from recsys.settings import ConsumerSettings, Settings

    catalog = await asyncio.to_thread(load_catalog, prepared.source_url)
    customers = list(catalog.customers)[share[0] :: share[1]]
    stream, delivery, bucket = await asyncio.to_thread(fresh_streams, 2)
    settings = Settings(
        database_url=SecretStr(prepared.database_url),
        stream=stream,
        delivery_stream=delivery,
        dead_letters=f"s3://{bucket}/dead",
        initial_position="TRIM_HORIZON",
        host="127.0.0.1",
        port=0,
        consumer=ConsumerSettings() if poll_s is None else ConsumerSettings(poll_interval_s=poll_s),
    )
    stop = asyncio.Event()
    async with running(settings, stop) as up:
        warm = Tracker()
        done = asyncio.Event()
        watcher = asyncio.create_task(_watch(up.url, warm, done))
        await _produce(stream, catalog, customers, warm, rate=rate, seconds=1.0)
        await warm.settle(60)
        done.set()
        await watcher
        if warm.pending:
            raise RuntimeError("the warm-up events never became visible")

        tracker = Tracker()
        done = asyncio.Event()
        watcher = asyncio.create_task(_watch(up.url, tracker, done))
        started = time.monotonic()
        await _produce(stream, catalog, customers, tracker, rate=rate, seconds=windows * window_s)
        await tracker.settle(60)
        done.set()
        await watcher
        missing = sum(len(v) for v in tracker.pending.values())
        if missing:
            raise RuntimeError(f"{missing} events never became visible")
        per_window: list[list[float]] = [[] for _ in range(windows)]
        for put, seconds in tracker.latency:
            per_window[min(windows - 1, int((put - started) // window_s))].append(seconds)
        stats = up.consumer.stats
        stop.set()
    return per_window, (settings.consumer, stats)


def _stage_totals() -> dict[str, tuple[float, float]]:
    """(seconds, observations) per stage of the consumer's stage histogram, so far."""
    from consumer.metrics import STAGE_SECONDS

    totals: dict[str, list[float]] = {}
    for metric in STAGE_SECONDS.collect():
        for sample in metric.samples:
            stage = sample.labels.get("stage", "")
            slot = totals.setdefault(stage, [0.0, 0.0])
            if sample.name.endswith("_sum"):
                slot[0] = sample.value
            elif sample.name.endswith("_count"):
                slot[1] = sample.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


BEFORE_POLL_S = 0.25  # the default before this benchmark's comparison was added
STAGES = ("get_records", "decode", "recommend", "latest", "firehose", "batch")


def main(quick: bool) -> None:
    from infra.logs import configure_logging
    from recsys.settings import ConsumerSettings

    configure_logging("WARNING")
    rate = 20.0 if quick else 50.0
    windows = 3
    window_s = 10.0 if quick else 30.0
    prepared = prepared_model(1.0)
    default_poll = ConsumerSettings().poll_interval_s
    report = Report(
        "latency",
        scale={
            "rate_per_s": rate,
            "windows": windows,
            "window_s": window_s,
            "shards": 2,
            "poll_interval_s": [BEFORE_POLL_S, default_poll],
            "batch_max_wait_ms": ConsumerSettings().batch_max_wait_ms,
            "wiring": "recsys run (consumer + API, the default API loop)",
        },
    )
    configs = ((f"poll {BEFORE_POLL_S * 1000:.0f} ms (before)", BEFORE_POLL_S), ("default", None))

    async def side_by_side() -> list[tuple[list[list[float]], Any]]:
        # both at once, each on its own stream with its own consumer and API, and its own half of the
        # customers: the same load for both
        runs = (
            _run(prepared, rate, windows, window_s, poll_s=poll, share=(i, len(configs)))
            for i, (_, poll) in enumerate(configs)
        )
        return list(await asyncio.gather(*runs))

    stages_before = _stage_totals()
    outcomes = run_async(side_by_side())
    stages_after = _stage_totals()
    figures: dict[str, tuple[Any, Any]] = {}
    for (label, _), (per_window, (cfg, stats)) in zip(configs, outcomes, strict=True):
        poll_ms = 1000 * cfg.poll_interval_s
        events = sum(len(w) for w in per_window)
        p50 = report.add(
            Figure(
                f"{label}: put->visible p50",
                "ms",
                [1000 * percentile(w, 0.5) for w in per_window],
                note=f"poll interval {poll_ms:.0f} ms, {events} events",
            )
        )
        p99 = report.add(
            Figure(f"{label}: put->visible p99", "ms", [1000 * percentile(w, 0.99) for w in per_window])
        )
        figures[label] = (p50, p99)
        interval = report.add(Figure(f"{label}: poll interval", "ms", [poll_ms] * windows))
        report.ratio(f"{label}: p50 / poll interval", p50, interval)
        report.ratio(f"{label}: p99 / poll interval", p99, interval)
        report.add(
            Figure(
                f"{label}: consumer batches",
                "",
                [float(stats.batches)],
                note=f"{stats.records_in} records in",
            )
        )
    for stage in STAGES:
        seconds, count = (
            stages_after.get(stage, (0.0, 0.0))[i] - stages_before.get(stage, (0.0, 0.0))[i] for i in (0, 1)
        )
        if count:
            report.add(Figure(f"stage {stage} (both consumers)", "ms per call", [1000 * seconds / count]))
    (old50, old99), (new50, new99) = figures.values()
    report.ratio("p50 default / before", new50, old50, note="headline: same run, same load")
    report.ratio("p99 default / before", new99, old99)
    report.print()
    print(f"  wrote {report.write()}")
