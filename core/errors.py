"""The error hierarchy of the product. Vendor errors are mapped to these at the adapter boundary.

::

    RecsysError                      base; never raised directly
    ├── UserError                    the caller's mistake: CLI exit 2, HTTP 4xx
    │   ├── ConfigError              a bad or missing setting / flag / URL
    │   ├── SourceSchemaError        the source database lacks a table or column
    │   ├── NotFoundError            an id, version or object that does not exist
    │   ├── ArtifactError            an artifact that fails verification or is not trusted
    │   └── DataRejected             a dependency refused a request's data: the request is at fault
    ├── BadRecord                    an input record that can never be processed: dead-lettered
    ├── InfraError                   a dependency failed (retriable unless said otherwise)
    │   ├── DatabaseUnavailable      PostgreSQL / the source database cannot be reached
    │   ├── AwsError                 an AWS call failed
    │   │   └── Throttled            throughput exceeded: back off and retry
    │   └── LeaseLost                another worker owns the shard now: stop it, do not checkpoint
    └── ModelNotReady                no model version is loaded yet

``retriable`` is a class attribute: supervising loops retry what is retriable and surface the rest.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "AwsError",
    "BadRecord",
    "ConfigError",
    "DataRejected",
    "DatabaseUnavailable",
    "InfraError",
    "LeaseLost",
    "ModelNotReady",
    "NotFoundError",
    "RecsysError",
    "SourceSchemaError",
    "Throttled",
    "UserError",
]


class RecsysError(Exception):
    """Base of every error this product raises on purpose."""

    retriable: bool = False


class UserError(RecsysError):
    """The caller asked for something that cannot work; the message says what to change."""


class ConfigError(UserError):
    """A setting, flag or URL is missing or malformed."""


class SourceSchemaError(UserError):
    """The source database is reachable but lacks a table or column the pipeline reads."""


class NotFoundError(UserError):
    """A named thing (customer, item, artifact version, stream) does not exist."""


class ArtifactError(UserError):
    """An artifact failed verification (checksum, shape) or would need an explicit trust decision."""


class DataRejected(UserError):
    """A dependency refused the *data* of a request, not the request's delivery: text PostgreSQL
    cannot store (NUL, lone surrogates), a value out of a column's range, a non-finite vector, bytes an
    encoder refuses. Retrying the same request changes nothing, so it is never retried as is: a
    caller holding a batch isolates the request (the consumer dead-letters that record), the API
    answers 4xx. Raised by adapters for SQLSTATE class 22 (data exception) and encoder refusals."""


class BadRecord(RecsysError):
    """An input record that can never be processed. ``reason`` is short and stable (a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InfraError(RecsysError):
    """A dependency failed. Retried by supervising loops."""

    retriable = True


class DatabaseUnavailable(InfraError):
    """The database cannot be reached or refused the connection."""


class AwsError(InfraError):
    """An AWS API call failed."""


class Throttled(AwsError):
    """Provisioned throughput exceeded or a rate limit was hit."""


class LeaseLost(InfraError):
    """The lease of a shard was taken by another worker; the shard must stop without checkpointing."""

    retriable = False


class ModelNotReady(RecsysError):
    """No model version has been loaded into the vector store yet."""
