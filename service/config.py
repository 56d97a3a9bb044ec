"""What the API is handed by the wiring place: its tunables (``RECSYS_API__*``), the database, the
token. The service never reads the environment or the process settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field, SecretStr

__all__ = ["ApiSettings", "ServiceConfig"]


class ApiSettings(BaseModel):
    default_limit: int = Field(10, ge=1, le=100)
    max_limit: int = Field(100, ge=1, le=1000)
    pool_min_size: int = Field(1, ge=0, le=100, description="PostgreSQL connections kept open")
    pool_max_size: int = Field(10, ge=1, le=200)
    max_embedding_batch: int = Field(1000, ge=1, le=100_000, description="rows per POST /user_embeddings")
    model_retry_s: float = Field(
        5.0, gt=0, le=3600, description="how often a server without a model retries opening it"
    )
    model_refresh_s: float = Field(30.0, gt=0, le=86_400, description="how often to look for a newer model")
    answer_cache_mb: int = Field(
        64,
        ge=0,
        le=65_536,
        description="memory for stored answers kept between requests (dropped when the database "
        "announces a change); 0 reads every answer from the database",
    )
    answer_cache_ttl_s: float = Field(
        30.0, gt=0, le=86_400, description="a kept answer is read again from the database after this"
    )
    ready_timeout_s: float = Field(2.0, gt=0, le=60, description="time limit of the /readyz database check")
    shutdown_timeout_s: float = Field(10.0, gt=0, le=110, description="graceful drain of open requests")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=256 * 1024 * 1024,
        description="larger bodies get 413 (counted as read)",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request head must arrive within this, else the connection is closed",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=600, description="a request body must arrive within this of its head, else 408"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, le=3600, description="an idle kept-alive connection is closed after this"
    )
    max_connections: int = Field(
        1000, ge=1, le=100_000, description="past this many open connections, requests get 503"
    )
    # set by `recsys run --api-loop process` for the API child it starts (not for people to set)
    listen_fd: int | None = Field(None, ge=0, description="serve on this inherited listening socket")
    parent_fd: int | None = Field(None, ge=0, description="read end of a pipe: EOF = the parent died, stop")
    consumer_metrics_url: str | None = Field(
        None, description="the parent's consumer metrics (127.0.0.1), appended to /metrics"
    )
    consumer_metrics_timeout_s: float = Field(0.5, gt=0, le=10, description="time limit of that fetch")


@dataclass(frozen=True)
class ServiceConfig:
    """The API's part of the process settings."""

    database_url: SecretStr | None = None  # None: the app must be given a pool
    api_token: SecretStr | None = None  # None: no authentication
    ef_search: int | None = None  # None: the active version's own (chosen by the loader)
    exclude_bought: bool = True  # the model's answers leave out what the customer bought
    api: ApiSettings = field(default_factory=ApiSettings)
