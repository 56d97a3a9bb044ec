"""The dead-letter format (written by the consumer, read by forget) and which customers a letter names."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest

from core.checkpointing import Position
from core.deadletters import DeadLetter, customers_named, names_customer, object_key, parse_letter

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_letter_is_written_and_read_back_with_the_customers_it_names() -> None:
    data = b'{"customer_number": [112], "browse_history": []}'
    letter = DeadLetter("shardId-1", Position("42", 3), "bad_customer_number", "detail", data, "pk", NOW)
    line = orjson.dumps(letter.to_json(NOW))
    stored = orjson.loads(line)
    assert set(stored) == {
        "shard_id",
        "sequence_number",
        "sub_sequence",
        "reason",
        "detail",
        "data_base64",
        "partition_key",
        "arrival",
        "dead_lettered_at",
        "customer_numbers",
    }
    assert (stored["sequence_number"], stored["sub_sequence"]) == ("42", 3)
    assert stored["customer_numbers"] == [112]
    back = parse_letter(stored)
    assert back.data == data and back.reason == "bad_customer_number" and back.customer_numbers == {112}
    assert object_key([letter]) == "shardId-1/42-3.jsonl"


def test_text_no_encoder_can_carry_is_stored_escaped() -> None:
    letter = DeadLetter("s", Position("1"), "unencodable", "bad \ud800 text", b"\xff", "key\udc00")
    stored = orjson.loads(orjson.dumps(letter.to_json(NOW)))
    assert stored["detail"] == "bad \\ud800 text" and stored["partition_key"] == "key\\udc00"
    assert base64.b64decode(stored["data_base64"]) == b"\xff"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'{"customer_number": 112}', {112}),
        (b'{"customer_number": "112"}', {112}),
        (b'{"customer_number": " 112 "}', {112}),
        (b'{"customer_number": 112.0}', {112}),
        (b'{"customer_number": 1.12e2}', {112}),
        (b'{"customer_number": [112]}', {112}),
        (b'{"customer_number": [[111], "112"]}', {111, 112}),
        (b'{"customer_number": {"id": 112}}', {112}),
        (b'{"CustomerNumber":112}', {112}),
        (b'{"event": {"customer_number": 112}}', {112}),
        (b'{"customer\\u005fnumber": 112}', {112}),
        (b'{"session_id": "x", "customer_number": 112', {112}),  # truncated after the number
        (b'{"customer_number": [11', {11}),  # truncated inside the array
        (b'\xf3\x89\x9a\xc2garbage{"customer_number": 112}garbage', {112}),  # inside a KPL aggregate
        (b'{"customer_number": 1121}', {1121}),
        (b'{"customer_number": 112.5}', set()),
        (b'{"customer_number": -112}', set()),
        (b'{"customer_number": true, "x": 112}', set()),
        (b'{"customer_number": "112abc"}', set()),
        (b'{"customer_number": 1e999999999}', set()),
        (b'{"customer": 112}', set()),
        (b"112", set()),
    ],
)
def test_the_customers_a_record_names(data: bytes, named: set[int]) -> None:
    assert customers_named(data) == named


def test_a_numeric_partition_key_names_its_customer() -> None:
    assert customers_named(b"not json", " 112 ") == {112}
    assert customers_named(b"not json", "session-112") == set()


def test_letters_written_before_the_tag_existed_are_judged_by_their_raw_bytes() -> None:
    old = {"reason": "not_json", "data_base64": base64.b64encode(b'{"customer_number": [112').decode()}
    assert names_customer(parse_letter(old), 112)
    assert not names_customer(parse_letter(old), 11)
    tagged = {"reason": "x", "data_base64": "", "customer_numbers": [7]}
    assert names_customer(parse_letter(tagged), 7)
    damaged = {"reason": "x", "data_base64": '{"customer_number": 9} is not base64'}
    assert names_customer(parse_letter(damaged), 9)
