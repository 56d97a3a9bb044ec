"""The embedded stack's lifecycle and the migration runner, against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from infra.pg import load_migrations, migrate
from recsys.stack import LocalStack, StackInfo


def _children_of_state(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(state_dir) in cmdline:
            found.append(proc)
    return found


def test_stack_up_is_idempotent_and_down_leaves_no_process(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state")
    first = stack.up()
    try:
        again = stack.up()
        assert again == first
        status = stack.status()
        assert status["postgres"]["running"] and status["moto"]["running"]
        assert _children_of_state(tmp_path / "state"), (
            "postgres runs with its data folder on the command line"
        )
    finally:
        stack.down()
    assert stack.info() is None
    assert not stack.status()["postgres"]["running"]
    moto_pid = stack._read_state().get("moto_pid")
    assert moto_pid is None
    assert _children_of_state(tmp_path / "state") == []
    # data survives a restart
    restarted = stack.up()
    try:
        assert restarted.pg_port > 0
    finally:
        stack.destroy()
    assert not (tmp_path / "state").exists()


async def test_migrations_are_ordered_recorded_and_idempotent(stack: StackInfo, database_url: str) -> None:
    assert await migrate(database_url) == []  # the fixture already applied everything
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in load_migrations()]
        assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()


def _recsys(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_unreachable_database_is_one_line_and_exit_2() -> None:
    result = _recsys("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "cannot reach PostgreSQL" in result.stderr


def test_cli_rejects_a_non_postgres_database_url() -> None:
    result = _recsys("migrate", "--database-url", "mysql://root@localhost/x")
    assert result.returncode == 2
    assert "postgresql://" in result.stderr and "Traceback" not in result.stderr


def test_cli_migrate_against_a_running_database(database_url: str) -> None:
    result = _recsys("migrate", env={"RECSYS_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_every_subcommand_has_help() -> None:
    from recsys.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:  # type: ignore[union-attr]
        result = _recsys(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "usage: recsys" in result.stdout
