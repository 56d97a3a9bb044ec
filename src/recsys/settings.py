"""Settings: one pydantic-settings class, built once per process at the wiring place.

Every CLI flag ``--some-flag`` is also the environment variable ``RECSYS_SOME_FLAG`` (a field
``some_flag`` here). Tunables without a flag are nested sections: ``RECSYS_CONSUMER__BATCH_MAX_RECORDS``.
AWS follows the SDK's own variables (``AWS_REGION``, ``AWS_ENDPOINT_URL``, the credential chain).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiSettings",
    "ConsumerSettings",
    "EtlSettings",
    "Settings",
    "TrainSettings",
    "default_state_dir",
]


def default_state_dir() -> Path:
    """Where the embedded stack keeps its data: ``$RECSYS_STATE_DIR`` or ``./.state``."""
    return Path(os.environ.get("RECSYS_STATE_DIR", ".state")).resolve()


class EtlSettings(BaseModel):
    chunk_rows: int = Field(10_000, ge=100, le=5_000_000, description="rows per read chunk (memory)")
    row_group_rows: int = Field(100_000, ge=100, le=10_000_000, description="rows per Parquet row group")
    file_max_rows: int = Field(
        5_000_000, ge=1_000, description="rows per Parquet file before a new one starts"
    )
    update_policy: Literal["replace", "latest", "average"] = Field(
        "replace", description="repeated ratings of a pair: the later one, the newest by time, or the mean"
    )
    partition_by: Literal["none", "country", "customerNumber"] = Field(
        "none", description="lake partitioning; customerNumber makes a file per customer"
    )
    rating_time_column: str = Field("ratedAt", description="ratings' time column, for update_policy=latest")


class TrainSettings(BaseModel):
    epochs: int = Field(60, ge=1, le=1000)
    batch_size: int = Field(256, ge=16, le=65_536)
    learning_rate: float = Field(3e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0, lt=1, description="Adam L2 penalty")
    patience: int = Field(6, ge=1, le=100, description="epochs without improvement before stopping")
    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden layer widths of each tower")
    embedding_dim: int = Field(32, ge=2, le=2000, description="must match the vector(32) tables")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratings held out for early stopping")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratings held out for the metrics")
    seed: int = 7
    torch_threads: int = Field(1, ge=1, le=64)


class ConsumerSettings(BaseModel):
    lease_duration_s: float = Field(6.0, gt=0.5, le=600)
    lease_renew_interval_s: float = Field(2.0, gt=0.1, le=300)
    lease_take_interval_s: float = Field(2.0, gt=0.1, le=300)
    poll_interval_s: float = Field(0.25, ge=0.2, le=60, description=">= 0.2 s keeps under 5 GetRecords/s")
    get_records_limit: int = Field(1000, ge=1, le=10_000)
    batch_max_records: int = Field(500, ge=1, le=10_000, description="requests per recommender call")
    batch_max_wait_ms: int = Field(
        200, ge=0, le=60_000, description="how long records of a lagging shard may wait for the next page"
    )
    shutdown_deadline_s: float = Field(25.0, gt=0, le=110, description="below the ECS stopTimeout")
    aws_call_timeout_s: float = Field(10.0, gt=0, le=120)
    worker_id: str | None = Field(None, description="unset = <hostname>-<pid>-<random>; unique per process")
    shard_sync_interval_s: float = Field(30.0, gt=0, le=3600, description="ListShards into the lease table")
    model_refresh_interval_s: float = Field(30.0, gt=0, le=3600, description="look for a newer model")
    recommend_k: int = Field(10, ge=1, le=100, description="recommended items per event")
    cache_keys: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="user-feature keys (and browsed codes) whose candidate lists the active model "
        "version keeps; 0 = no cache",
    )

    @model_validator(mode="after")
    def _renew_within_lease(self) -> ConsumerSettings:
        if self.lease_renew_interval_s * 2 > self.lease_duration_s:
            raise ValueError(
                "consumer.lease_renew_interval_s must be at most half of consumer.lease_duration_s"
            )
        return self


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
    ready_timeout_s: float = Field(2.0, gt=0, le=60, description="time limit of the /readyz database check")
    shutdown_timeout_s: float = Field(10.0, gt=0, le=110, description="graceful drain of open requests")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=256 * 1024 * 1024, description="larger bodies get 413")
    # set by `recsys run --api-loop process` for the API child it starts (not for people to set)
    listen_fd: int | None = Field(None, ge=0, description="serve on this inherited listening socket")
    parent_fd: int | None = Field(None, ge=0, description="read end of a pipe: EOF = the parent died, stop")
    consumer_metrics_url: str | None = Field(
        None, description="the parent's consumer metrics (127.0.0.1), appended to /metrics"
    )
    consumer_metrics_timeout_s: float = Field(0.5, gt=0, le=10, description="time limit of that fetch")


class Settings(BaseSettings):
    """All configuration of one process. Flags override the environment."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    # --- where things are -------------------------------------------------------------------
    state_dir: Path = Field(default_factory=default_state_dir)
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL with pgvector; unset = the embedded stack's"
    )
    source_url: SecretStr | None = Field(
        None, description="the shop database (SQLAlchemy URL, e.g. mysql+pymysql://root@127.0.0.1/test)"
    )
    lake: str | None = Field(None, description="data lake URI: s3://bucket/prefix or a local path")
    artifacts: str | None = Field(None, description="ml-artifacts URI: s3://bucket/prefix or a local path")
    stream: str = "recsys-browsing-events"
    delivery_stream: str = "recsys-recommendations"
    dead_letters: str | None = Field(None, description="dead-letter URI (s3://bucket/prefix)")
    initial_position: Literal["TRIM_HORIZON", "LATEST"] | str = "TRIM_HORIZON"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"
    ef_search: int = Field(
        100,
        ge=10,
        le=1000,
        description="hnsw.ef_search of the nearest-item queries (consumer and API): higher = better "
        "recall on a large catalog, slower queries (docs/performance.md, section 3)",
    )

    etl: EtlSettings = EtlSettings()
    train: TrainSettings = TrainSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    api: ApiSettings = ApiSettings()

    @field_validator("api_token")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in {"", "changeme", "change-me"}:
            raise ValueError("RECSYS_API_TOKEN is a placeholder; set a real secret or unset it")
        return value


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with flag values (``None`` = not given) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)
