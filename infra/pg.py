"""PostgreSQL: the asyncpg pool (with pgvector's codec) and the migration runner.

Migrations are the ordered ``recsys/sql/NNNN_name.sql`` files. ``migrate`` applies the ones not yet
recorded in ``schema_migrations``, each in its own transaction, under an advisory lock so that
concurrent runs (several tasks starting at once) apply each file exactly once. A file already applied
whose text changed is reported, not re-applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from core.errors import ConfigError, DatabaseUnavailable
from infra.logs import get_logger
from infra.urls import check_url, redact_url, scrub

__all__ = [
    "Migration",
    "connect",
    "create_pool",
    "load_migrations",
    "map_pg_error",
    "migrate",
    "new_database",
    "pool",
]

log = get_logger(__name__)
_MIGRATION_LOCK = 0x7265637379730001  # "recsys" + 1
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def map_pg_error(exc: BaseException, url: str = "") -> Exception:
    """Ours for a driver error met while connecting to ``url``; the message names the URL with its
    secrets hidden, and the driver's own text is scrubbed of them too."""
    where = f" ({redact_url(url)})" if url else ""
    said = scrub(str(exc), url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"database does not exist{where}: {said}")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
        return ConfigError(f"database refused the credentials{where}: {said}")
    if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.CannotConnectNowError):
        return DatabaseUnavailable(f"cannot reach PostgreSQL{where}: {said}")
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
        return DatabaseUnavailable(f"PostgreSQL connection failed{where}: {said}")
    if isinstance(exc, ValueError):
        return ConfigError(f"invalid database URL{where}: {said}")
    return DatabaseUnavailable(f"PostgreSQL error{where}: {said}")


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    has_vector = await conn.fetchval("SELECT 1 FROM pg_type WHERE typname = 'vector'")
    if has_vector:
        from pgvector.asyncpg import register_vector

        await register_vector(conn)


async def connect(
    url: str, timeout_s: float = 10.0, *, application_name: str | None = None
) -> asyncpg.Connection[Any]:
    """One connection (the pgvector codec registered); ``application_name`` names it in
    ``pg_stat_activity``."""
    check_url(url)
    settings = {"application_name": application_name} if application_name else None
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            url, timeout=timeout_s, server_settings=settings
        )
    except Exception as exc:
        raise map_pg_error(exc, url) from exc
    try:
        await _init_connection(conn)
    except BaseException:  # cancelled or failed half-way: the connection is not left open
        conn.terminate()
        raise
    return conn


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """A pool's ``reset`` for users that leave no session state behind: nothing to send."""


async def create_pool(
    url: str,
    min_size: int = 1,
    max_size: int = 10,
    timeout_s: float = 10.0,
    *,
    reset_sessions: bool = True,
) -> asyncpg.Pool[Any]:
    """A pool on ``url`` (the pgvector codec registered on each connection).

    ``reset_sessions=False`` is for users that set no session state (every setting transaction-local,
    no advisory locks, no LISTEN): a released connection is not sent asyncpg's reset query (``RESET
    ALL; UNLISTEN *; ...``), which otherwise doubles the round trips of a one-statement request. An
    open transaction is still rolled back."""
    check_url(url)
    try:
        created: asyncpg.Pool[Any] = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            command_timeout=30.0,
            init=_init_connection,
            reset=None if reset_sessions else _keep_session,
        )
    except Exception as exc:
        raise map_pg_error(exc, url) from exc
    return created


@asynccontextmanager
async def pool(
    url: str, min_size: int = 1, max_size: int = 10, *, reset_sessions: bool = True
) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await create_pool(url, min_size=min_size, max_size=max_size, reset_sessions=reset_sessions)
    try:
        yield p
    finally:
        await asyncio.shield(p.close())


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise ConfigError(f"duplicate migration numbers in recsys/sql: {versions}")
    return found


async def migrate(url: str) -> list[Migration]:
    """Apply pending migrations; return the ones applied by this call (empty when up to date)."""
    conn = await connect(url)
    applied: list[Migration] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            for m in load_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        log.warning(
                            "migration %04d_%s changed after it was applied; not re-applied",
                            m.version,
                            m.name,
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                log.info("applied migration %04d_%s", m.version, m.name)
                applied.append(m)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(f"migration failed: {exc}") from exc
    finally:
        await asyncio.shield(conn.close())
    return applied


async def new_database(server_url: str, prefix: str) -> str:
    """Create a fresh, migrated database ``<prefix>_<random>`` on the server of ``server_url`` and
    return its URL (tests, benchmarks and drills that must not share tables)."""
    import uuid

    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", prefix):
        raise ConfigError(f"database name prefix {prefix!r} must be lower-case letters, digits and _")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(f"creating database {name} failed: {exc}") from exc
    finally:
        await asyncio.shield(conn.close())
    url = server_url.split("?", 1)[0].rsplit("/", 1)[0] + "/" + name
    await migrate(url)
    return url
