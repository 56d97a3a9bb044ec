"""What a hostile or slow client can do to the real server process (`recsys serve` as a subprocess,
raw sockets): bodies are counted while they are read, the token is checked before any of it is
read, and clients that trickle a request head or body are cut off.

Nothing here measures time: each test waits, in a loop with a generous deadline, for something the
server does (answer, close the connection), and fails when the deadline passes first.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from .conftest import serve_process

TOKEN = "t0ken-" + uuid.uuid4().hex
CHUNK = b"[" + b" " * (64 * 1024 - 2) + b"]"  # 64 KiB of whitespace-padded JSON, sent again and again
WAIT_S = 30.0  # the most any test waits for the server to act


@dataclass
class Served:
    host: str
    port: int
    pid: int

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=WAIT_S)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    """`recsys serve` with a token, 1 s header and body timeouts, idle kept-alive connections held
    for a minute, room for 8 connections."""
    with serve_process(
        database_url,
        RECSYS_API_TOKEN=TOKEN,
        RECSYS_API__HEADER_TIMEOUT_S="1",
        RECSYS_API__BODY_TIMEOUT_S="1",
        RECSYS_API__KEEP_ALIVE_TIMEOUT_S="60",
        RECSYS_API__MAX_CONNECTIONS="8",
    ) as (url, pid):
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield Served(parts.hostname, parts.port, pid)


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: api.test", *headers, "", ""]
    return "\r\n".join(lines).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Answer:
    status: int | None  # None: the server closed the connection without a response
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it


def _read_answer(sock: socket.socket) -> Answer:
    """Read until the server closes the connection (or WAIT_S passes): the response, if any."""
    deadline = time.monotonic() + WAIT_S
    data = b""
    closed = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not got:
            closed = True
            break
        data += got
    if not data:
        return Answer(None, {}, b"", closed)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return Answer(int(status_line.split()[1]), headers, body, closed)


def _send_until_answered(sock: socket.socket, total: int, rss: list[int], served: Served) -> int:
    """Send ``total`` bytes of chunked body unless the server answers (or hangs up) first; sample the
    server's RSS every MiB. Returns how many body bytes went out."""
    sent = 0
    while sent < total:
        readable, writable, _ = select.select([sock], [sock], [], WAIT_S)
        if readable or not writable:
            break
        try:
            sock.sendall(_chunk(CHUNK))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(CHUNK)
        if sent % (1 << 20) < len(CHUNK):
            rss.append(served.rss())
    return sent


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server: Served) -> None:
    """A 100 MB chunked POST, no Content-Length: 413 once 1 MiB is passed; the server's memory stays
    where it was (before: the whole body was read, +600 MB of RSS for 200 MB)."""
    before = server.rss()
    rss = [before]
    with server.connect() as sock:
        sock.sendall(
            _head(
                "POST",
                "/user_embeddings",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
        )
        sent = _send_until_answered(sock, 100 * 1024 * 1024, rss, server)
        answer = _read_answer(sock)
    rss.append(server.rss())
    assert answer.status == 413, answer
    assert orjson.loads(answer.body)["error"] == "too_large"
    assert answer.closed
    assert sent < 100 * 1024 * 1024  # refused while it was being sent, not after
    assert max(rss) - before < 64 * 1024 * 1024, [r // 2**20 for r in rss]


def test_a_declared_oversized_body_is_refused_before_a_byte_is_sent(server: Served) -> None:
    with server.connect() as sock:
        sock.sendall(
            _head(
                "POST",
                "/items_from_user",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                f"Content-Length: {200 * 1024 * 1024}",
            )
        )
        answer = _read_answer(sock)
    assert answer.status == 413, answer
    assert answer.closed


def test_no_token_is_answered_401_before_the_body_is_read(server: Served) -> None:
    """Head and the first chunk of a body that never ends: 401 at once, the connection closed
    (before: the server waited for the whole body, then validated it, then checked the token)."""
    with server.connect() as sock:
        sock.sendall(
            _head("POST", "/user_embeddings", "Content-Type: application/json", "Transfer-Encoding: chunked")
        )
        sock.sendall(_chunk(b"[{"))
        answer = _read_answer(sock)
    assert answer.status == 401, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert orjson.loads(answer.body)["error"] == "unauthorized"
    assert answer.closed


def test_no_token_and_a_50_mb_body_leaves_memory_alone(server: Served) -> None:
    before = server.rss()
    rss = [before]
    with server.connect() as sock:
        sock.sendall(
            _head("POST", "/items_from_user", "Content-Type: application/json", "Transfer-Encoding: chunked")
        )
        _send_until_answered(sock, 50 * 1024 * 1024, rss, server)
        answer = _read_answer(sock)
    assert answer.status == 401, answer
    assert max(rss) - before < 64 * 1024 * 1024, [r // 2**20 for r in rss]


def _trickle(sock: socket.socket, data: bytes) -> Answer | None:
    """Send ``data`` one byte at a time, a byte whenever 0.1 s pass without the server answering or
    closing; returns what the server said once it did, or None when WAIT_S passed first (or all of
    ``data`` went out)."""
    deadline = time.monotonic() + WAIT_S
    for i in range(len(data)):
        if time.monotonic() > deadline:
            break
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            return _read_answer(sock)
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return Answer(None, {}, b"", closed=True)
    return None


def test_a_client_trickling_its_request_head_is_cut_off(server: Served) -> None:
    head = _head("GET", "/healthz", *(f"X-Padding-{i}: {'x' * 40}" for i in range(200)))
    with server.connect() as sock:
        answer = _trickle(sock, head)
    assert answer is not None, "the server read a head trickled over far more than its header timeout"
    assert answer.closed
    assert answer.status == 408, answer


def test_an_idle_connection_is_closed(server: Served) -> None:
    with server.connect() as sock:
        answer = _read_answer(sock)
    assert answer.closed and answer.status is None


def test_a_client_trickling_its_body_gets_408(server: Served) -> None:
    body = b"[" + b" " * 4000 + b"]"
    with server.connect() as sock:
        sock.sendall(
            _head(
                "POST",
                "/user_embeddings",
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
            )
        )
        answer = _trickle(sock, body)
    assert answer is not None, "the server read a body trickled over far more than its body timeout"
    assert answer.status == 408, answer
    assert orjson.loads(answer.body)["error"] == "request_timeout"
    assert answer.closed


def _healthz(sock: socket.socket) -> bytes:
    sock.sendall(_head("GET", "/healthz"))
    data = b""
    while not data.endswith(b"}"):
        got = sock.recv(4096)
        assert got, "the server closed a kept-alive connection"
        data += got
    return data


def test_past_max_connections_requests_get_503(server: Served) -> None:
    """With 7 kept-alive connections held open (idle, for up to a minute), the 8th connection makes
    8 = RECSYS_API__MAX_CONNECTIONS open: its request is refused."""
    held = [server.connect() for _ in range(7)]
    try:
        for sock in held:
            assert _healthz(sock).startswith(b"HTTP/1.1 200")
        with server.connect() as sock:
            sock.sendall(_head("GET", "/healthz", "Connection: close"))
            answer = _read_answer(sock)
    finally:
        for sock in held:
            sock.close()
    assert answer.status == 503, answer


def test_a_kept_alive_connection_serves_request_after_request(server: Served) -> None:
    """The timeouts do not cut a well-behaved client's connection between requests."""
    with server.connect() as sock:
        for _ in range(3):
            assert _healthz(sock).startswith(b"HTTP/1.1 200")


def test_an_unfinished_request_head_over_16_kib_is_refused(server: Served) -> None:
    """h11 refuses to buffer more than 16 KiB of a head that has not ended (a whole head that
    arrives in one read is parsed whatever its size)."""
    head = _head("GET", "/healthz", *(f"X-Padding-{i}: {'x' * 100}" for i in range(200)))
    with server.connect() as sock:
        sock.sendall(head[:-2])  # no blank line: the head goes on
        answer = _read_answer(sock)
    assert answer.status == 400, answer
    assert answer.closed
