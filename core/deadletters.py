"""The dead-letter format, defined once: written by the consumer, read by ``recsys forget``.

A dead letter is one bad record with why and where it failed. The store holds one object per
processed batch that had bad records, under ``<shard id>/<sequence>-<sub>.jsonl`` (the batch's first
position, so a batch replayed after a crash overwrites its own dead letters instead of duplicating
them), newline-delimited JSON, one line per record::

    {"shard_id": "shardId-000000000001", "sequence_number": "4959...", "sub_sequence": 0,
     "reason": "not_json", "detail": "...", "data_base64": "<the record's raw bytes>",
     "partition_key": "103", "arrival": "<ISO-8601>|null", "dead_lettered_at": "<ISO-8601>",
     "customer_numbers": [103]}

``customer_numbers`` are the customers the record names (:func:`customers_named`), computed when
the letter is written, so an operator sees whose data a letter holds and ``recsys forget`` finds it.
Letters written before that field existed lack it; :func:`names_customer` applies the same rule to
their raw bytes, so both kinds are found.

**Which customers a record names** (the rule ``recsys forget`` deletes by; it errs on the side of
removal): every number given as the value of a customer-number field (a key ``customer_number`` or
``customerNumber``, in any letter case) anywhere in the raw bytes: a JSON number (``112``,
``112.0``, ``1.12e2``) or a string of digits (``"112"``), alone or inside arrays or objects
(``[112]``, ``{"id": 112}``), also when the bytes are truncated, garbled or inside a KPL aggregate;
plus the partition key when it is a number (the producer keys records by customer number).

Text fields are written as valid UTF-8 whatever they hold (a lone surrogate becomes ``\\udXXX``
text), so writing a dead letter never fails on its content.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from core.checkpointing import Position

__all__ = [
    "DeadLetter",
    "StoredLetter",
    "customers_named",
    "names_customer",
    "object_key",
    "parse_letter",
]

# a customer-number key, then its value: a JSON number or a string of digits, possibly nested
_KEY = re.compile(rb'"customer_?number"\s*:\s*', re.IGNORECASE)
_TOKEN = re.compile(rb'-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|"\s*(\d{1,40})\s*"|[\[\]{}]|"(?:[^"\\]|\\.)*"')
_VALUE_SCAN_BYTES = 65_536  # how far a value is followed (a customer's list, not a novel)
_MAX_CUSTOMER = 2**63  # numbers beyond any key we store are not customers
_KEY_NAMES = frozenset({"customer_number", "customernumber"})


def _clean(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates become their ``\\udXXX`` escape (readable, storable)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _as_customer(token: bytes | str) -> int | None:
    """A JSON number or digit string that is a whole number in a customer key's range, else None."""
    try:
        value = Decimal(token.decode() if isinstance(token, bytes) else token)
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or not 0 <= value < _MAX_CUSTOMER or value != value.to_integral_value():
        return None
    return int(value)


def _scan_value(data: bytes, start: int) -> Iterator[int]:
    """The numbers of the value that starts at ``start``: a scalar, or a whole array / object
    (followed to its closing bracket, or to the end of truncated bytes)."""
    depth = 0
    for match in _TOKEN.finditer(data, start, min(len(data), start + _VALUE_SCAN_BYTES)):
        if depth == 0 and match.start() != start:
            return  # the value is not a number, a digit string or a container (true, null, garbage)
        token = match.group(0)
        if token in (b"[", b"{"):
            depth += 1
            continue
        if token in (b"]", b"}"):
            depth -= 1
            if depth <= 0:
                return
            continue
        digits = match.group(1)
        if digits is not None or not token.startswith(b'"'):
            number = _as_customer(digits if digits is not None else token)
            if number is not None:
                yield number
        if depth == 0:
            return  # a scalar value: one token


def _walk(value: Any, found: set[int], budget: int = 100_000) -> None:
    """Numbers under customer-number keys of a decoded JSON value (keys decoded: escapes count)."""
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack and budget > 0:
        current, under_key = stack.pop()
        budget -= 1
        if isinstance(current, dict):
            for key, item in current.items():
                stack.append((item, under_key or (isinstance(key, str) and key.lower() in _KEY_NAMES)))
        elif isinstance(current, list):
            stack.extend((item, under_key) for item in current)
        elif under_key and not isinstance(current, bool):
            number: int | None = None
            if isinstance(current, int | float):
                number = _as_customer(repr(current))
            elif isinstance(current, str) and current.strip().isascii() and current.strip().isdigit():
                number = _as_customer(current.strip())
            if number is not None:
                found.add(number)


def customers_named(data: bytes, partition_key: str = "") -> frozenset[int]:
    """The customer numbers ``data`` (one raw record) names, by the rule in the module docstring."""
    found: set[int] = set()
    key = partition_key.strip()
    if key.isascii() and key.isdigit():
        number = _as_customer(key)
        if number is not None:
            found.add(number)
    for match in _KEY.finditer(data):
        found.update(_scan_value(data, match.end()))
    if b"\\u" in data:  # a key spelt with escapes (customer\u005fnumber) is only seen decoded
        with contextlib.suppress(ValueError, RecursionError):
            _walk(json.loads(data), found)
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One bad record: where it was (shard, position), why it failed, and its raw bytes."""

    shard_id: str
    position: Position
    reason: str
    detail: str
    data: bytes
    partition_key: str = ""
    arrival: datetime | None = None

    def to_json(self, now: datetime) -> dict[str, object]:
        """The stored line (see the module docstring), ready for any JSON encoder."""
        return {
            "shard_id": _clean(self.shard_id),
            "sequence_number": self.position.sequence,
            "sub_sequence": self.position.sub,
            "reason": _clean(self.reason),
            "detail": _clean(self.detail),
            "data_base64": base64.b64encode(self.data).decode(),
            "partition_key": _clean(self.partition_key),
            "arrival": self.arrival.isoformat() if self.arrival else None,
            "dead_lettered_at": now.isoformat(),
            "customer_numbers": sorted(customers_named(self.data, self.partition_key)),
        }


def object_key(letters: Sequence[DeadLetter]) -> str:
    """Where a batch's dead letters are stored: named by its first letter's position."""
    first = letters[0]
    shard = first.shard_id.replace("/", "_")
    return f"{shard}/{first.position.sequence}-{first.position.sub}.jsonl"


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as read back: every field optional (older letters, damaged lines)."""

    reason: str = ""
    detail: str = ""
    data: bytes | None = None
    partition_key: str = ""
    customer_numbers: frozenset[int] = field(default_factory=frozenset)


def parse_letter(obj: Mapping[str, Any]) -> StoredLetter:
    """A stored line's fields, tolerant of what older versions or damage left out."""
    raw = obj.get("data_base64")
    data: bytes | None = None
    if isinstance(raw, str):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            data = raw.encode("utf-8", "backslashreplace")  # not base64: judge the text we have
    tagged = obj.get("customer_numbers")
    numbers = frozenset(
        n
        for n in (tagged if isinstance(tagged, list) else [])
        if isinstance(n, int) and not isinstance(n, bool)
    )
    text = {name: obj.get(name) for name in ("reason", "detail", "partition_key")}
    return StoredLetter(
        reason=text["reason"] if isinstance(text["reason"], str) else "",
        detail=text["detail"] if isinstance(text["detail"], str) else "",
        data=data,
        partition_key=text["partition_key"]
        if isinstance(text["partition_key"], str)
        else str(text["partition_key"] or ""),
        customer_numbers=numbers,
    )


def names_customer(letter: StoredLetter, customer: int) -> bool:
    """True when the letter holds data of ``customer``: tagged with it at write time, or its raw
    bytes, partition key or detail name it by the rule in the module docstring."""
    if customer in letter.customer_numbers:
        return True
    if customer in customers_named(letter.data or b"", letter.partition_key):
        return True
    return customer in customers_named(letter.detail.encode("utf-8", "backslashreplace"))
