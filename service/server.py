"""Running the app on uvicorn inside our own event loop, stopped by our own stop event.

``recsys serve`` and ``recsys run`` own the signals (SIGTERM/SIGINT set a stop event); uvicorn's own
handlers are not installed, so one shutdown path drains everything: the server stops accepting,
finishes open requests within ``shutdown_timeout_s``, runs the app's lifespan shutdown, returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from core.errors import InfraError
from infra.logs import get_logger

__all__ = ["ApiServer", "bind_socket", "inherited_socket", "stop_when_closed"]

log = get_logger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port=0``: a free one); ``getsockname()`` tells which."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their proto
    # says TCP; with proto 0 every response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InfraError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a parent process bound and handed down as file descriptor ``fd``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise InfraError(f"no listening socket on inherited file descriptor {fd}: {exc}") from exc
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def stop_when_closed(fd: int, stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when the pipe's read end ``fd`` reaches EOF: the process holding the write end died.

    How an API child of ``recsys run`` never outlives its parent, however the parent ends (even
    SIGKILL: the kernel closes its end of the pipe).
    """
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if not stop.is_set():
                log.warning("the parent process is gone; stopping")
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # our process owns the signals
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@dataclass
class ApiServer:
    """``await ApiServer(app, sock).run(stop)`` serves until ``stop`` is set, then drains."""

    app: FastAPI
    sock: socket.socket
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(max(1, self.shutdown_timeout_s)),
            server_header=False,
        )
        self._server = _Server(config)
        self._ended = asyncio.Event()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    async def wait_ready(self) -> None:
        """Returns once the app's lifespan has started and the socket accepts requests.

        Raises ``InfraError`` when the server ended without getting there.
        """
        ready = asyncio.create_task(self._server.ready.wait())
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        if not self._server.ready.is_set():
            raise InfraError("the API server stopped before it was ready")

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="api-server")
        stopping = asyncio.create_task(stop.wait(), name="api-stop-wait")
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._server.should_exit = True
            try:
                await serving
            except SystemExit as exc:  # uvicorn exits when the app's lifespan startup fails
                raise InfraError("the API failed to start; the log above says why") from exc
            finally:
                self.sock.close()
                self._ended.set()
        log.info("API stopped")
