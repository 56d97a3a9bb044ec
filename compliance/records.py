"""Which stored records belong to a customer: pure functions over bytes, no I/O.

A record *names* a customer by the one rule of ``core.deadletters.customers_named``: the number is
the value of a customer-number field (``customer_number`` / ``customerNumber``) anywhere in its bytes,
as a JSON number or a string of digits, alone or inside arrays and objects, also in truncated or
garbled bytes and inside KPL aggregates. A dead letter is the customer's when it names them so, or
its partition key is the number, or it was tagged with it when written (``customer_numbers``); the
format is ``core.deadletters``'. The rule errs on the side of removal: a bad record that merely
*looks* like it names the customer is dropped with it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from core.deadletters import customers_named, parse_letter
from core.deadletters import names_customer as letter_names_customer

__all__ = [
    "FilterResult",
    "filter_dead_letters",
    "filter_delivered",
    "filter_embeddings_csv",
    "is_gzip",
    "names_customer",
    "same_customer",
]

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class FilterResult:
    """The object's new body (``None``: nothing of the customer was in it) and how many lines went."""

    body: bytes | None
    removed: int
    kept: int

    @property
    def changed(self) -> bool:
        return self.removed > 0


def same_customer(value: object, customer: int) -> bool:
    """``value`` (from JSON) denotes ``customer``: 103, "103", " 103 " and 103.0 do; True does not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == customer
    if isinstance(value, float):
        return value == customer
    if isinstance(value, str):
        text = value.strip()
        return text.isdigit() and int(text) == customer
    return False


def names_customer(data: bytes, customer: int) -> bool:
    """True when ``data`` (one raw record) names ``customer``; see the module docstring."""
    return customer in customers_named(data)


def is_gzip(key: str, body: bytes) -> bool:
    return key.endswith(".gz") or body[:2] == _GZIP_MAGIC


def _lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.strip()]


def _join(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _failed_delivery_names(line: bytes, customer: int) -> bool:
    """Firehose's error output (``errors/`` prefix): ``{"rawData": base64 of our record, ...}``."""
    if b'"rawData"' not in line:
        return False
    try:
        failed = orjson.loads(line)
        data = base64.b64decode(str(failed.get("rawData", "")), validate=True)
    except (orjson.JSONDecodeError, binascii.Error, ValueError, AttributeError):
        return False
    return names_customer(data, customer)


def filter_delivered(key: str, body: bytes, customer: int) -> FilterResult:
    """A delivered object (newline-delimited recommendation records, maybe gzipped) without the
    customer's lines. An object that does not even contain the number's digits is not parsed."""
    compressed = is_gzip(key, body)
    text = gzip.decompress(body) if compressed else body
    digits = str(customer).encode()
    if digits not in text and b'"rawData"' not in text:
        return FilterResult(None, 0, len(_lines(text)))
    kept: list[bytes] = []
    removed = 0
    for line in _lines(text):
        if names_customer(line, customer) or _failed_delivery_names(line, customer):
            removed += 1
        else:
            kept.append(line)
    if not removed:
        return FilterResult(None, 0, len(kept))
    out = _join(kept)
    if compressed and kept:
        out = gzip.compress(out, mtime=0)
    return FilterResult(out, removed, len(kept))


def _dead_letter_names(line: bytes, customer: int) -> bool:
    try:
        letter = orjson.loads(line)
    except orjson.JSONDecodeError:
        return names_customer(line, customer)  # a damaged line: judge the text we have
    if not isinstance(letter, dict):
        return False
    return letter_names_customer(parse_letter(letter), customer)


def filter_dead_letters(body: bytes, customer: int) -> FilterResult:
    """A dead-letter object (one JSON line per bad record) without the records naming the customer."""
    kept: list[bytes] = []
    removed = 0
    for line in _lines(body):
        if _dead_letter_names(line, customer):
            removed += 1
        else:
            kept.append(line)
    if not removed:
        return FilterResult(None, 0, len(kept))
    return FilterResult(_join(kept), removed, len(kept))


def filter_embeddings_csv(body: bytes, customer: int) -> FilterResult:
    """A CSV keyed by customer number in its first column (the artifact store's ``id,embedding`` user
    embeddings and ``id,bought`` bought lists, also an older release's ``id,embedding,bought``)
    without the customer's row."""
    lines = body.split(b"\n")
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    wanted = str(customer).encode()
    kept = [row for row in rows if row.split(b",", 1)[0].strip() != wanted]
    removed = len(rows) - len(kept)
    if not removed:
        return FilterResult(None, 0, len(kept))
    return FilterResult(_join([header, *kept]), removed, len(kept))
