"""The wiring place: turns settings into connected resources, once per process.

Nothing connects, loads a model or reads the environment at import time; commands call these.
"""

from __future__ import annotations

import os

from recsys.core.errors import ConfigError
from recsys.infra.logs import get_logger
from recsys.settings import Settings
from recsys.stack import LocalStack, StackInfo

__all__ = ["database_url", "ensure_local_stack", "require", "source_url", "use_local_aws"]

log = get_logger(__name__)


def ensure_local_stack(settings: Settings) -> StackInfo:
    """The embedded stack under ``settings.state_dir``, started if it is not running."""
    stack = LocalStack(settings.state_dir)
    info = stack.info()
    if info is None:
        log.info("starting the embedded stack in %s", settings.state_dir)
        info = stack.up()
    return info


def database_url(settings: Settings) -> str:
    """``--database-url`` / ``RECSYS_DATABASE_URL``, or the embedded PostgreSQL (started on demand)."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"--database-url must be a postgresql:// URL, got {url.split(':', 1)[0]}://...")
        return url
    return ensure_local_stack(settings).database_url


def source_url(settings: Settings) -> str:
    """``--source-url`` / ``RECSYS_SOURCE_URL``, or the embedded shop database."""
    if settings.source_url is not None:
        return settings.source_url.get_secret_value()
    return ensure_local_stack(settings).source_url


def use_local_aws(info: StackInfo) -> None:
    """Point this process (and its children) at the embedded moto server, unless AWS is configured."""
    for key, value in info.env().items():
        if key.startswith("AWS_"):
            os.environ.setdefault(key, value)


def require(value: str | None, flag: str) -> str:
    if value is None or not value.strip():
        env = "RECSYS_" + flag.lstrip("-").replace("-", "_").upper()
        raise ConfigError(f"{flag} is required (or set {env})")
    return value
