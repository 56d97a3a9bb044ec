"""Prometheus metrics of the API, on prometheus_client's default registry (defined once per process).

Labels stay low-cardinality: the route *template* (``/recommendations/{customer_number}``), never a
customer number; unknown paths are one label value.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["MODEL_INFO", "RECOMMENDATIONS", "REQUESTS", "REQUEST_SECONDS", "UNMATCHED", "set_model_version"]

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
