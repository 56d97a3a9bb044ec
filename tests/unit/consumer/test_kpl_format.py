"""KPL aggregation: round trips, sub-sequence numbers, and the bad-aggregate rules."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.kpl import MAGIC, aggregate, deaggregate, pack
from core.errors import BadRecord

KEYS = st.text(min_size=1, max_size=20)
RECORDS = st.lists(st.tuples(KEYS, st.binary(max_size=300)), min_size=1, max_size=40)


@given(RECORDS)
def test_aggregate_then_deaggregate_gives_back_every_record_in_order(
    records: list[tuple[str, bytes]],
) -> None:
    blobs = aggregate(records, max_bytes=2_000)
    out = [r for blob in blobs for r in deaggregate(blob.data)]
    assert [(r.partition_key, r.data) for r in out] == records
    assert sum(b.count for b in blobs) == len(records)
    for blob in blobs:
        subs = [r.sub for r in deaggregate(blob.data)]
        assert subs == list(range(len(subs)))
        assert blob.partition_key == deaggregate(blob.data)[0].partition_key


def test_aggregates_respect_the_size_limit() -> None:
    records = [(f"k{i}", b"x" * 100) for i in range(100)]
    blobs = aggregate(records, max_bytes=1_000)
    assert len(blobs) > 10
    assert all(len(b.data) <= 1_000 for b in blobs)


def test_explicit_hash_keys_and_shared_key_table() -> None:
    blob = pack([("a", b"1", "123"), ("b", b"2", None), ("a", b"3", "123")])
    out = deaggregate(blob)
    assert [(r.partition_key, r.explicit_hash_key, r.data) for r in out] == [
        ("a", "123", b"1"),
        ("b", None, b"2"),
        ("a", "123", b"3"),
    ]
    assert blob.count(b"\x0a\x01a") == 1  # the partition key table holds "a" once


def test_a_plain_record_is_one_user_record_with_sub_sequence_zero() -> None:
    out = deaggregate(b'{"customer_number": 1}', "pk")
    assert len(out) == 1 and out[0].sub == 0 and out[0].partition_key == "pk"


def test_a_wrong_md5_is_a_bad_aggregate() -> None:
    blob = bytearray(pack([("a", b"1", None)]))
    blob[-1] ^= 0xFF
    with pytest.raises(BadRecord) as err:
        deaggregate(bytes(blob))
    assert err.value.reason == "bad_aggregate"


@pytest.mark.parametrize(
    "body",
    [
        b"\x1a\x05\x08\x00",  # truncated record
        b"\x1a\x02\x08\x05",  # record without data, index out of range
        b"\x0a\x01a\x1a\x04\x08\x03\x1a\x00",  # partition key index 3 of 1
        b"\x0f",  # wire type 7
        b"",  # no records
    ],
)
def test_malformed_protobuf_with_a_good_md5_is_a_bad_aggregate(body: bytes) -> None:
    blob = MAGIC + body + hashlib.md5(body).digest()
    with pytest.raises(BadRecord) as err:
        deaggregate(blob)
    assert err.value.reason == "bad_aggregate"


def test_a_known_kpl_encoding_decodes() -> None:
    # hand-assembled the way the KPL writes it: key table, then records (pk index 0, data)
    body = b"\x0a\x03pk1" + b"\x1a\x07\x08\x00\x1a\x03abc" + b"\x1a\x06\x08\x00\x1a\x02de"
    blob = MAGIC + body + hashlib.md5(body).digest()
    out = deaggregate(blob)
    assert [(r.partition_key, r.data, r.sub) for r in out] == [("pk1", b"abc", 0), ("pk1", b"de", 1)]
