"""The consumer's Prometheus metrics, defined once per process on the default registry.

Labels stay low-cardinality: ``shard_id`` and ``reason`` (a short, stable BadRecord reason), never
a customer or an event id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_SIZE",
    "CACHE_LOOKUPS",
    "CHECKPOINT_FAILURES",
    "FIREHOSE_FAILED_PUTS",
    "HANDOFF_SECONDS",
    "LEASES_HELD",
    "LEASE_MOVES",
    "MILLIS_BEHIND",
    "RECORDS_DEAD_LETTERED",
    "RECORDS_FAILED",
    "RECORDS_IN",
    "RECORDS_OUT",
    "RECORDS_SUPPRESSED",
    "STAGE_SECONDS",
    "WORKER_CPU",
    "WORKER_RECORDS_PER_S",
    "observe_cache",
]

RECORDS_IN = Counter("recsys_consumer_records_in", "user records read from Kinesis (after de-aggregation)")
RECORDS_OUT = Counter("recsys_consumer_records_out", "recommendation records acknowledged by Firehose")
RECORDS_FAILED = Counter(
    "recsys_consumer_records_failed", "attempts that failed and will be retried", ["stage"]
)
RECORDS_DEAD_LETTERED = Counter(
    "recsys_consumer_records_dead_lettered", "bad records written to the dead-letter store", ["reason"]
)
BATCH_SIZE = Histogram(
    "recsys_consumer_batch_size",
    "user records per processed GetRecords batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
STAGE_SECONDS = Histogram(
    "recsys_consumer_stage_seconds",
    "latency of one processing stage per batch",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MILLIS_BEHIND = Gauge(
    "recsys_consumer_millis_behind_latest", "MillisBehindLatest of the last GetRecords", ["shard_id"]
)
RECORDS_SUPPRESSED = Counter(
    "recsys_consumer_records_suppressed",
    "records of suppressed customers, skipped",
)
LEASES_HELD = Gauge("recsys_consumer_leases_held", "shard leases held by this worker")
LEASE_MOVES = Counter(
    "recsys_consumer_lease_moves",
    "leases this worker gained, by cause: balance (handed over on its request), handoff (released by "
    "a stopping worker), expiry (its owner stopped renewing: unplanned), initial (never owned before)",
    ["cause"],
)
HANDOFF_SECONDS = Histogram(
    "recsys_consumer_handoff_seconds",
    "from a handoff request to the owner handing the lease over (the batch in hand finished)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
WORKER_RECORDS_PER_S = Gauge(
    "recsys_consumer_worker_records_per_second", "records/s this worker reads over its leases (its load)"
)
WORKER_CPU = Gauge(
    "recsys_consumer_worker_cpu",
    "this process's CPU in cores busy, reported for balancing (after warm-up)",
)
CHECKPOINT_FAILURES = Counter("recsys_consumer_checkpoint_failures", "checkpoints that could not be written")
FIREHOSE_FAILED_PUTS = Counter(
    "recsys_consumer_firehose_failed_puts",
    "events in Firehose records rejected in a PutRecordBatch (each record retried with its events)",
)
CACHE_LOOKUPS = Counter(
    "recsys_consumer_cache_lookups",
    "lookups in the active model version's caches: candidates (one per distinct user-feature key "
    "of a batch), neighbours (one per distinct browsed code); result hit or miss",
    ["cache", "result"],
)


def observe_cache(cache: str, hits: int, misses: int) -> None:
    """The recommender's per-batch cache report (``ModelRecommender.open(observe=...)``)."""
    if hits:
        CACHE_LOOKUPS.labels(cache, "hit").inc(hits)
    if misses:
        CACHE_LOOKUPS.labels(cache, "miss").inc(misses)
