"""Prometheus metrics of the API, on prometheus_client's default registry (defined once per process).

Labels stay low-cardinality: the route *template* (``/recommendations/{customer_number}``), never a
customer number; unknown paths are one label value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from infra.logs import get_logger

__all__ = [
    "ANSWER_CACHE_BYTES",
    "ANSWER_CACHE_LIVE",
    "CONSUMER_METRICS_UP",
    "MODEL_INFO",
    "RECOMMENDATIONS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "UNMATCHED",
    "answer_cache_lookups",
    "exposition",
    "set_model_version",
]

log = get_logger(__name__)

UNMATCHED = "<unmatched>"

REQUESTS = Counter(
    "recsys_api_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "recsys_api_request_duration_seconds",
    "HTTP request latency, by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RECOMMENDATIONS = Counter(
    "recsys_api_recommendations_total",
    "GET /recommendations answers, by source (stream, model, popular)",
    ["source"],
)
CONSUMER_METRICS_UP = Gauge(
    "recsys_api_consumer_metrics_up",
    "1 when this /metrics includes the consumer's metrics fetched from its process (recsys run "
    "--api-loop process); 0 when that process did not answer, or none runs beside this API",
)
ANSWER_CACHE_LOOKUPS = Counter(
    "recsys_api_answer_cache_lookups_total",
    "Stored-answer lookups of GET /recommendations: hit (answered from memory), miss (read from the "
    "database and kept), bypass (read from the database: the change listener is down, or a limit "
    "deeper than the kept answers)",
    ["result"],
)
ANSWER_CACHE_BYTES = Gauge(
    "recsys_api_answer_cache_bytes", "Estimated bytes of the stored answers kept in memory"
)
ANSWER_CACHE_LIVE = Gauge(
    "recsys_api_answer_cache_live",
    "1 while the API listens to the database's answer-change notifications (answers are kept in "
    "memory); 0 while it does not (every answer is read from the database)",
)


def answer_cache_lookups(result: str) -> Counter:
    """The lookup counter's child for ``result`` (bound once: it is counted per request)."""
    child: Counter = ANSWER_CACHE_LOOKUPS.labels(result)
    return child


MODEL_INFO = Gauge("recsys_api_model_info", "1 for the model version the API answers with", ["model_version"])

_current: list[str | None] = [None]


def set_model_version(version: str | None) -> None:
    """Expose ``version`` as the one model version (none when no model is loaded)."""
    if version == _current[0]:
        return
    MODEL_INFO.clear()
    if version is not None:
        MODEL_INFO.labels(version).set(1)
    _current[0] = version


class _Families:
    """A collector that yields already-parsed metric families (another process's)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


async def exposition(consumer_url: str | None, timeout_s: float) -> bytes:
    """This process's metrics, plus the consumer process's at ``consumer_url`` when one is given.

    The consumer's families whose names this process already has (``process_*``, ``python_*``,
    the API's own) are left out, so every family appears once. When the consumer does not answer
    within ``timeout_s``, this process's metrics are served alone and
    ``recsys_api_consumer_metrics_up`` is 0.
    """
    if consumer_url is None:
        return generate_latest(REGISTRY)
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(consumer_url)
            response.raise_for_status()
        foreign = list(text_string_to_metric_families(response.text))
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("the consumer's metrics are missing from /metrics: %s", exc)
        CONSUMER_METRICS_UP.set(0)
        return generate_latest(REGISTRY)
    CONSUMER_METRICS_UP.set(1)
    own = generate_latest(REGISTRY)
    # names as the text format has them: a counter's or histogram's `_created` is a family of its own
    names = {f.name for f in text_string_to_metric_families(own.decode())}
    theirs = CollectorRegistry(auto_describe=False)
    theirs.register(
        _Families(m for m in foreign if m.name not in names and m.name.removesuffix("_created") not in names)
    )
    return own + generate_latest(theirs)
