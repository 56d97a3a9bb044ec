"""Settings: one pydantic-settings class, built once per process at the wiring place.

Every CLI flag ``--some-flag`` is also the environment variable ``RECSYS_SOME_FLAG`` (a field
``some_flag`` here). Tunables without a flag are nested sections: ``RECSYS_CONSUMER__BATCH_MAX_RECORDS``.
AWS follows the SDK's own variables (``AWS_REGION``, ``AWS_ENDPOINT_URL``, the credential chain).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.config import ConsumerConfig, ConsumerSettings
from etl.config import EtlSettings
from model_store.config import TrainSettings
from service.config import ApiSettings, ServiceConfig

__all__ = [
    "ApiSettings",
    "ConsumerSettings",
    "EtlSettings",
    "Settings",
    "TrainSettings",
    "build_settings",
    "default_state_dir",
]


def default_state_dir() -> Path:
    """Where the embedded stack keeps its data: ``$RECSYS_STATE_DIR`` or ``./.state``."""
    return Path(os.environ.get("RECSYS_STATE_DIR", ".state")).resolve()


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
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="`recsys consume`: serve its Prometheus metrics on this port (0 = a free one); "
        "unset = none. A `recsys serve` beside it appends them to its /metrics "
        "(RECSYS_API__CONSUMER_METRICS_URL)",
    )
    api_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"
    ef_search: int | None = Field(
        None,
        ge=10,
        le=1000,
        description="hnsw.ef_search of the nearest-item queries (consumer and API): higher = better "
        "recall on a large catalog, slower queries; unset = the active version's own, the smallest "
        "width the loader measured to reach RECSYS_RECALL_TARGET (docs/performance.md)",
    )
    recall_target: float = Field(
        0.98,
        gt=0.0,
        le=1.0,
        description="`recsys load-vectors`: the recall@10 (against the exact top-10) the version's "
        "ef_search must reach, measured on a sample of its user vectors right after the index is "
        "built; the version serves with that width unless RECSYS_EF_SEARCH is set",
    )
    exclude_bought: bool = Field(
        True,
        description="leave the items a customer already bought (their training pairs in the active "
        "hybrid version) out of their model answers (consumer and API); false = keep them",
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

    def for_consumer(self) -> ConsumerConfig:
        """The consumer's part: streams, dead letters (default: a folder under the state folder)."""
        return ConsumerConfig(
            stream=self.stream,
            delivery_stream=self.delivery_stream,
            dead_letters=self.dead_letters or str(self.state_dir / "dead-letters"),
            initial_position=self.initial_position,
            tuning=self.consumer,
        )

    def for_api(self) -> ServiceConfig:
        """The API's part: its database, token, search width and tunables."""
        return ServiceConfig(
            database_url=self.database_url,
            api_token=self.api_token,
            ef_search=self.ef_search,
            exclude_bought=self.exclude_bought,
            api=self.api,
        )


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with flag values (``None`` = not given) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)
