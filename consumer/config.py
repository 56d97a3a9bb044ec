"""What the consumer is handed by the wiring place: its tunables (``RECSYS_CONSUMER__*``) and where
it reads from and writes to. The consumer never reads the environment or the process settings."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

__all__ = ["ConsumerConfig", "ConsumerSettings"]


class ConsumerSettings(BaseModel):
    lease_duration_s: float = Field(6.0, gt=0.5, le=600)
    lease_renew_interval_s: float = Field(2.0, gt=0.1, le=300)
    lease_take_interval_s: float = Field(2.0, gt=0.1, le=300)
    poll_interval_s: float = Field(
        0.2, ge=0.2, le=60, description="one GetRecords per shard per interval: >= 0.2 s keeps within 5/s"
    )
    get_records_limit: int = Field(1000, ge=1, le=10_000)
    batch_max_records: int = Field(500, ge=1, le=10_000, description="requests per recommender call")
    batch_max_wait_ms: int = Field(
        200, ge=0, le=60_000, description="how long records of a lagging shard may wait for the next page"
    )
    cpu_warmup_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="CPU is not reported for balancing until this long after start (the start-up transient)",
    )
    load_window_s: float = Field(
        10.0, gt=0, le=600, description="records/s per shard are measured over this window for balancing"
    )
    balance_band: float = Field(
        0.2,
        ge=0.05,
        le=1.0,
        description="a load move must narrow a gap by this share of the mean load per worker",
    )
    balance_cooldown_s: float = Field(
        4.0, ge=0, le=600, description="after asking for a lease, wait this long before asking again"
    )
    cpu_ceiling: float = Field(
        0.8, gt=0, le=64, description="cores busy at or above which a worker asks for no more leases"
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="the consumer's CPU priority (nice value of its threads) below the API's, which "
        "keeps 0, when both share a task (recsys run, or recsys consume beside recsys serve); "
        "0 = unchanged",
    )
    shutdown_deadline_s: float = Field(25.0, gt=0, le=110, description="below the ECS stopTimeout")
    aws_call_timeout_s: float = Field(10.0, gt=0, le=120)
    worker_id: str | None = Field(None, description="unset = <hostname>-<pid>-<random>; unique per process")
    shard_sync_interval_s: float = Field(30.0, gt=0, le=3600, description="ListShards into the lease table")
    model_refresh_interval_s: float = Field(30.0, gt=0, le=3600, description="look for a newer model")
    firehose_pack_bytes: int = Field(
        1000 * 1024,
        ge=0,
        le=1000 * 1024,
        description="output records (one line per event) packed into one Firehose record up to this "
        "many bytes (Firehose bills each record rounded up to 5 KB); 0 = one event per Firehose record",
    )
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


@dataclass(frozen=True)
class ConsumerConfig:
    """One consumer's part of the process settings."""

    stream: str
    delivery_stream: str
    dead_letters: str  # URI: s3://bucket/prefix or a local folder
    initial_position: str  # TRIM_HORIZON, LATEST or AT_TIMESTAMP:<iso>
    tuning: ConsumerSettings
