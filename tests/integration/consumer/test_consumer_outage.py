"""A PostgreSQL outage under a running consumer process: it must neither spin nor flood its log.

The consumer (``consumer_process.py``: ``recsys consume``'s wiring with a fake model) reaches the
database through a TCP proxy this test controls. The proxy is cut (listener closed, every
connection dropped: connections are refused at once, the case a retry loop without backoff spins
on) for a fixed window while events keep arriving; the process's CPU seconds and the lines it
logs over that window are bounded; then the proxy is restored and everything put is delivered.

The window is the experiment's length, not a synchronisation: every wait on the system's state
polls it with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

PROCESS = Path(__file__).with_name("consumer_process.py")
OUTAGE_S = 8.0
# a coordinator retrying at once spins a core (~1 CPU second per second) and logs thousands of
# lines; with backoff the process idles: well under these bounds
MAX_CPU_SHARE = 0.25
MAX_LOG_LINES = 25


class Proxy:
    """A TCP proxy to PostgreSQL that can be cut (refusing and dropping connections) and restored."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def _spawn(environ: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, str(PROCESS)], env=environ, stdout=log, stderr=log)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def test_a_database_outage_costs_little_cpu_and_few_log_lines_then_everything_is_delivered(
    make_env: Any, database_url: str, h: Any, tmp_path: Path
) -> None:
    env = make_env(shards=2)
    parts = urlsplit(database_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    log_path = tmp_path / "consumer.log"
    environ = env.process_environ(
        tmp_path,
        database_url=_via(database_url, proxy.port),
        lease_duration_s=3,
        lease_renew_interval_s=0.5,
        lease_take_interval_s=0.3,
        worker_id="outage-a",
    )
    direct: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    proc = _spawn(environ, log_path)
    try:
        first = env.put([json.dumps(h.event(1200 + i, i)).encode() for i in range(20)])
        await h.wait_for(lambda: {o["event_id"] for o in env.outputs()} >= set(first), 60, "the first events")
        child = psutil.Process(proc.pid)

        cpu_before = sum(child.cpu_times()[:2])
        lines_before = _lines(log_path)
        await proxy.cut()
        during = env.put([json.dumps(h.event(1300 + i, i)).encode() for i in range(20)])
        await asyncio.sleep(OUTAGE_S)  # the outage's length (the experiment), not a synchronisation
        cpu = sum(child.cpu_times()[:2]) - cpu_before
        logged = _lines(log_path) - lines_before
        print(f"outage of {OUTAGE_S:.0f} s: {cpu:.2f} CPU seconds, {logged} log lines")
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert cpu <= MAX_CPU_SHARE * OUTAGE_S, f"{cpu:.2f} CPU seconds in a {OUTAGE_S:.0f} s outage"
        assert logged <= MAX_LOG_LINES, log_path.read_text()[-3000:]

        await proxy.start()  # the database is back, on the same address
        after = env.put([json.dumps(h.event(1400 + i, i)).encode() for i in range(20)])
        wanted = {*first, *during, *after}
        await h.wait_for(
            lambda: {o["event_id"] for o in env.outputs()} >= wanted, 90, "every event after the outage"
        )

        async def checkpointed() -> bool:
            rows = await direct.fetch(
                "SELECT checkpoint_seq FROM kinesis_leases WHERE stream = $1 AND checkpoint_seq IS NOT NULL",
                env.stream,
            )
            last = {
                eid.split(":")[0]: eid.split(":")[1]
                for eid in sorted(wanted, key=lambda e: int(e.split(":")[1]))
            }
            return {r["checkpoint_seq"] for r in rows} >= set(last.values())

        await h.wait_for(checkpointed, 60, "the checkpoints past every event")
        text = log_path.read_text()
        assert "works again" in text or "succeeded again" in text  # the recovery is logged once
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 40) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await direct.close()
        await proxy.cut()
