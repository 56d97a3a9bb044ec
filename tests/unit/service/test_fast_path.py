"""Which requests of GET /recommendations the fast path answers itself (the rest go to the route)."""

from __future__ import annotations

from typing import Any

import pytest

from service.fast_path import plain_request


def _scope(path: str, query: bytes = b"", method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/recommendations/103", b"", (103, 10)),
        ("/recommendations/0", b"limit=1", (0, 1)),
        ("/recommendations/2147483647", b"limit=100", (2147483647, 100)),
    ],
)
def test_plain_requests_are_answered_here(path: str, query: bytes, expected: tuple[int, int]) -> None:
    assert plain_request(_scope(path, query), 10, 100) == expected


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/recommendations/0103", b""),  # FastAPI's reading of it is the reference
        ("/recommendations/-1", b""),
        ("/recommendations/2147483648", b""),
        ("/recommendations/1e3", b""),
        ("/recommendations/103/", b""),
        ("/recommendations/", b""),
        ("/recommendations/103", b"limit=0"),
        ("/recommendations/103", b"limit=101"),
        ("/recommendations/103", b"limit=05"),
        ("/recommendations/103", b"limit=%35"),
        ("/recommendations/103", b"limit=5&limit=6"),
        ("/recommendations/103", b"limit=5&x=1"),
        ("/recommendations/103", b"limit"),
        ("/recommendations/103", b"x=1"),
        ("/recommendations/\u0663", b""),  # a non-ASCII digit
        ("/items_from_item", b"item_id=S10_1678"),
    ],
)
def test_everything_else_goes_to_the_route(path: str, query: bytes) -> None:
    assert plain_request(_scope(path, query), 10, 100) is None


def test_only_get_and_http() -> None:
    assert plain_request(_scope("/recommendations/103", method="HEAD"), 10, 100) is None
    assert plain_request({"type": "websocket", "path": "/recommendations/103"}, 10, 100) is None
