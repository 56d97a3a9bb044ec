"""KPL record aggregation: the wire format the Kinesis Producer Library writes and the KCL reads.

An aggregated Kinesis record is::

    f3 89 9a c2 | protobuf AggregatedRecord | md5(protobuf bytes) (16 bytes)

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;   // ignored
    }

The protobuf subset is hand-written here (varints and length-delimited fields), so no dependency.

A record that does not start with the magic bytes is a plain record (one user record, sub-sequence
0). A record that starts with the magic bytes but whose MD5 does not match or whose protobuf is
malformed is **dead-lettered** with reason ``bad_aggregate`` — a deliberate departure from the KCL,
which passes such a blob on as one plain record: our events are JSON, which never starts with
``0xf3``, so the blob could only fail later as ``not_json`` with a less useful reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.errors import BadRecord

__all__ = [
    "MAGIC",
    "AggregatedRecord",
    "UserRecord",
    "aggregate",
    "deaggregate",
    "is_aggregated",
    "pack",
]

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST_LEN = 16
# the KPL's default AggregationMaxSize; a Kinesis record may be up to 1 MiB including its key
DEFAULT_MAX_AGGREGATE_BYTES = 51_200


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user record of an aggregate (or a plain record): its keys, bytes and sub-sequence number."""

    partition_key: str
    data: bytes
    sub: int = 0
    explicit_hash_key: str | None = None


@dataclass(frozen=True, slots=True)
class AggregatedRecord:
    """What a producer puts: the outer record's partition key and (optional) hash key, and its bytes."""

    partition_key: str
    data: bytes
    count: int
    explicit_hash_key: str | None = None


# --------------------------------------------------------------------------- protobuf subset
def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field; unknown wire types 1 and 5 are skipped over."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated fixed-width field")


# --------------------------------------------------------------------------- reading
def is_aggregated(data: bytes) -> bool:
    return data.startswith(MAGIC)


def deaggregate(data: bytes, partition_key: str = "") -> list[UserRecord]:
    """The user records inside ``data``, numbered 0.. in order; a plain record is one record (sub 0).

    Raises ``BadRecord("bad_aggregate", ...)`` for a blob with the magic bytes that fails its MD5
    check or does not parse.
    """
    if not is_aggregated(data):
        return [UserRecord(partition_key, data, 0)]
    body = data[len(MAGIC) : len(data) - _DIGEST_LEN]
    digest = data[len(data) - _DIGEST_LEN :]
    if len(data) < len(MAGIC) + _DIGEST_LEN or hashlib.md5(body, usedforsecurity=False).digest() != digest:
        raise BadRecord("bad_aggregate", "KPL aggregate with a wrong MD5 digest")
    try:
        return _parse(body)
    except ValueError as exc:
        raise BadRecord("bad_aggregate", f"KPL aggregate does not parse: {exc}") from None


def _parse(body: bytes) -> list[UserRecord]:
    keys: list[str] = []
    hash_keys: list[str] = []
    raw_records: list[bytes] = []
    for number, wire, value in _fields(body):
        if wire != 2 or not isinstance(value, bytes):
            if number in (1, 2, 3):
                raise ValueError(f"field {number} has wire type {wire}")
            continue
        if number == 1:
            keys.append(value.decode("utf-8"))
        elif number == 2:
            hash_keys.append(value.decode("utf-8"))
        elif number == 3:
            raw_records.append(value)
    out: list[UserRecord] = []
    for sub, raw in enumerate(raw_records):
        pk_index: int | None = None
        ehk_index: int | None = None
        payload: bytes | None = None
        for number, wire, value in _fields(raw):
            if number == 1 and wire == 0 and isinstance(value, int):
                pk_index = value
            elif number == 2 and wire == 0 and isinstance(value, int):
                ehk_index = value
            elif number == 3 and wire == 2 and isinstance(value, bytes):
                payload = value
        if pk_index is None or payload is None:
            raise ValueError(f"record {sub} lacks partition_key_index or data")
        if pk_index >= len(keys):
            raise ValueError(f"record {sub} names partition key {pk_index} of {len(keys)}")
        if ehk_index is not None and ehk_index >= len(hash_keys):
            raise ValueError(f"record {sub} names explicit hash key {ehk_index} of {len(hash_keys)}")
        out.append(
            UserRecord(keys[pk_index], payload, sub, None if ehk_index is None else hash_keys[ehk_index])
        )
    if not out:
        raise ValueError("aggregate holds no records")
    return out


# --------------------------------------------------------------------------- writing
def pack(records: Sequence[tuple[str, bytes, str | None]]) -> bytes:
    """One aggregate of ``(partition_key, data, explicit_hash_key or None)`` user records."""
    if not records:
        raise ValueError("cannot aggregate zero records")
    keys: dict[str, int] = {}
    hash_keys: dict[str, int] = {}
    encoded: list[bytes] = []
    for pk, data, ehk in records:
        pk_index = keys.setdefault(pk, len(keys))
        inner = _varint(1 << 3 | 0) + _varint(pk_index)
        if ehk is not None:
            inner += _varint(2 << 3 | 0) + _varint(hash_keys.setdefault(ehk, len(hash_keys)))
        inner += _field(3, data)
        encoded.append(_field(3, inner))
    body = b"".join(
        [*(_field(1, k.encode()) for k in keys), *(_field(2, k.encode()) for k in hash_keys), *encoded]
    )
    return MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()


def _record_overhead(pk: str, data: bytes) -> int:
    # upper bound of what one user record adds: its key (if new), indexes, tags and lengths
    return len(pk.encode()) + len(data) + 24


def aggregate(
    records: Sequence[tuple[str, bytes]],
    max_bytes: int = DEFAULT_MAX_AGGREGATE_BYTES,
    explicit_hash_key: str | None = None,
) -> list[AggregatedRecord]:
    """Pack user records, in order, into as few aggregates of at most ``max_bytes`` as possible.

    The outer record of each aggregate takes the partition key of its first user record (the
    KPL's choice), so all of them should be bound for one shard (the producer groups by shard).
    A single record larger than ``max_bytes`` travels alone.
    """
    out: list[AggregatedRecord] = []
    group: list[tuple[str, bytes, str | None]] = []
    size = len(MAGIC) + _DIGEST_LEN
    for pk, data in records:
        cost = _record_overhead(pk, data)
        if group and size + cost > max_bytes:
            out.append(AggregatedRecord(group[0][0], pack(group), len(group), explicit_hash_key))
            group, size = [], len(MAGIC) + _DIGEST_LEN
        group.append((pk, data, None))
        size += cost
    if group:
        out.append(AggregatedRecord(group[0][0], pack(group), len(group), explicit_hash_key))
    return out
