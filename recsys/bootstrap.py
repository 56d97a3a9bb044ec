"""Where things are: settings -> the database URL, the embedded stack, where AWS calls go.

``recsys.runtime`` (the one wiring place) and the batch jobs' commands call these once per process.
Nothing connects, loads a model or reads the environment at import time.
"""

from __future__ import annotations

import os

from core.errors import ConfigError
from infra.logs import get_logger
from recsys.settings import Settings
from recsys.stack import LocalStack, StackInfo, require_local_packages

__all__ = [
    "aws_configured",
    "database_url",
    "ensure_local_stack",
    "prepare_aws",
    "require",
    "source_url",
    "use_local_aws",
    "with_database",
]

log = get_logger(__name__)


def ensure_local_stack(settings: Settings) -> StackInfo:
    """The embedded stack under ``settings.state_dir``, started if it is not running."""
    stack = LocalStack(settings.state_dir)
    info = stack.info()
    if info is None:
        require_local_packages()
        log.info("starting the embedded stack in %s", settings.state_dir)
        info = stack.up()
    return info


def database_url(settings: Settings) -> str:
    """``--database-url`` / ``RECSYS_DATABASE_URL``, or the embedded PostgreSQL (started on demand)."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            scheme, sep, _ = url.partition("://")
            got = f", got {scheme}://..." if sep and scheme.isalnum() else ""  # never echo what is not a URL
            raise ConfigError(f"--database-url must be a postgresql:// URL{got}")
        return url
    return ensure_local_stack(settings).database_url


def with_database(settings: Settings) -> Settings:
    """Settings whose ``database_url`` is resolved (the embedded stack's when none is given)."""
    from pydantic import SecretStr

    return settings.model_copy(update={"database_url": SecretStr(database_url(settings))})


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


_AWS_SOURCES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",  # ECS/Fargate task role
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",  # EKS/IRSA
)


def aws_configured() -> bool:
    """Whether this process has an AWS endpoint or any credential source. A source named in the
    environment answers without a network call; otherwise botocore's chain decides (shared files,
    instance profile)."""
    if any(os.environ.get(name) for name in _AWS_SOURCES):
        return True
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.Session().get_credentials() is not None
    except BotoCoreError:  # a configured provider that fails right now is still not ours to replace
        return True


def prepare_aws(settings: Settings, *uris: str) -> bool:
    """Decide where AWS calls go, once per command, the same way for every command.

    With no AWS configuration at all (no ``AWS_ENDPOINT_URL``, no credential source), the embedded
    stack's moto server stands in for AWS, as the embedded PostgreSQL does for an unset database URL.
    When ``uris`` are given and none is ``s3://``, nothing is needed and nothing starts. Returns True
    when calls go to an emulator (``AWS_ENDPOINT_URL`` set): callers may then create missing
    resources (buckets here; streams in the consumer's commands), since an emulator starts empty and
    on real AWS they are provisioned.
    """
    from infra.objectstore import S3Store, open_store

    s3 = [u for u in uris if u and u.strip().startswith("s3://")]
    if uris and not s3:
        return bool(os.environ.get("AWS_ENDPOINT_URL"))
    if not aws_configured():
        info = ensure_local_stack(settings)
        use_local_aws(info)
        log.info("no AWS configuration found: using the embedded moto server at %s", info.aws_endpoint_url)
    emulator = bool(os.environ.get("AWS_ENDPOINT_URL"))
    if emulator:
        for uri in s3:
            store = open_store(uri)
            if isinstance(store, S3Store):
                store.ensure_bucket()
    return emulator
