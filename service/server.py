"""Running the app on uvicorn inside our own event loop, stopped by our own stop event.

``recsys serve`` and ``recsys run`` own the signals (SIGTERM/SIGINT set a stop event); uvicorn's own
handlers are not installed, so one shutdown path drains everything: the server stops accepting,
finishes open requests within ``shutdown_timeout_s``, runs the app's lifespan shutdown, returns.

What a slow or idle client can hold (``RECSYS_API__*``, docs/api.md "Limits"):

- ``header_timeout_s``: a connection must deliver a complete request head within this of opening
  (or of the first byte of its next request); otherwise it is closed (with a 408 when part of a
  head had arrived). uvicorn has no such timeout of its own: :class:`_HeadTimeoutH11` adds it.
- ``body_timeout_s``: the body, within this of the head (``service.middleware``; 408).
- ``keep_alive_timeout_s``: an idle kept-alive connection is closed after this (uvicorn's
  ``timeout_keep_alive``).
- ``max_connections``: past this many open connections (or running requests), uvicorn answers
  503 (``limit_concurrency``) instead of running the request.
- a request head still unfinished after 16 KiB is refused with 400 (h11's
  ``max_incomplete_event_size``; a whole head that arrives in one read is parsed at any size).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.errors import InfraError
from infra.logs import get_logger
from service.config import ApiSettings

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


_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request head.

    The timer runs while the connection waits for a request head: from the connection's start,
    and from the first byte of each next request (an idle kept-alive connection is uvicorn's
    ``timeout_keep_alive``'s to close). It stops when h11 has parsed a complete head.
    """

    header_timeout_s = 10.0  # set per server by ``_protocol``

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        waiting_for_head = self.conn.their_state is h11.IDLE
        if waiting_for_head:
            self._head_bytes += len(data)
            self._arm_head_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a complete head was parsed
            self._disarm_head_timer()
            self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm_head_timer()  # until the next request's first byte (keep-alive rules meanwhile)
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes:  # part of a head arrived: say why the connection ends
            body = (
                b'{"error":"request_timeout","reason":"the request head did not arrive within '
                + f"{self.header_timeout_s:g}".encode()
                + b' s","request_id":null}'
            )
            self.transport.write(_REQUEST_TIMEOUT % (len(body), body))
        self.transport.close()


def _protocol(header_timeout_s: float) -> type[H11Protocol]:
    return type("HeadTimeoutH11", (_HeadTimeoutH11,), {"header_timeout_s": header_timeout_s})


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
    """``await ApiServer(app, sock, settings).run(stop)`` serves until ``stop`` is set, then drains."""

    app: FastAPI
    sock: socket.socket
    settings: ApiSettings = field(default_factory=ApiSettings)

    def __post_init__(self) -> None:
        api = self.settings
        config = uvicorn.Config(
            self.app,
            http=_protocol(api.header_timeout_s),
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(max(1, api.shutdown_timeout_s)),
            timeout_keep_alive=api.keep_alive_timeout_s,
            limit_concurrency=api.max_connections,
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
