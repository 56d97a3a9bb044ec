"""The listening socket: accepted connections must get TCP_NODELAY (asyncio sets it only for sockets
whose proto says TCP; without it every response waits for the client's delayed ACK)."""

from __future__ import annotations

import socket

import pytest

from core.errors import InfraError
from service.server import bind_socket


def test_accepted_connections_are_tcp_with_nodelay() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(sock.getsockname()[:2], timeout=5)
        sock.setblocking(True)
        accepted, _ = sock.accept()
        try:
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            accepted.close()
            client.close()
    finally:
        sock.close()


def test_a_taken_port_is_a_clear_error() -> None:
    first = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(InfraError, match=r"cannot listen on 127\.0\.0\.1"):
            bind_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
