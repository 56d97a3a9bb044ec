"""Which lines name a customer: delivered records, dead letters, embeddings CSV (pure, no I/O)."""

from __future__ import annotations

import base64
import gzip

import orjson
import pytest

from compliance.records import (
    filter_dead_letters,
    filter_delivered,
    filter_embeddings_csv,
    names_customer,
    same_customer,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(103, True), ("103", True), (" 103 ", True), (103.0, True), (1030, False), ("10", False),
     (True, False), (None, False), ("abc", False), (103.5, False)],
)  # fmt: skip
def test_same_customer(value: object, expected: bool) -> None:
    assert same_customer(value, 103) is expected


def test_names_customer_by_json_and_by_text_of_a_damaged_record() -> None:
    assert names_customer(b'{"customer_number": 103, "browse_history": []}', 103)
    assert names_customer(b'{"customer_number": "103"}', 103)
    assert names_customer(b'{"customer_number": 103, "browse_hist', 103)  # truncated JSON
    assert not names_customer(b'{"customer_number": 1031}', 103)
    assert not names_customer(b'{"customer_number": 10}', 103)
    assert not names_customer(b'{"session_id": "103"}', 103)
    assert not names_customer(b"\x00\x01 not json", 103)


def _record(customer: int, n: int) -> bytes:
    return orjson.dumps({"customer_number": customer, "event_id": f"s:{n}", "recommended_items": []})


def test_filter_delivered_keeps_the_others_in_order() -> None:
    body = b"\n".join([_record(103, 1), _record(112, 2), _record(103, 3), _record(1103, 4)]) + b"\n"
    result = filter_delivered("out/2026/x", body, 103)
    assert result.removed == 2 and result.kept == 2
    assert result.body == _record(112, 2) + b"\n" + _record(1103, 4) + b"\n"


def test_filter_delivered_untouched_object_is_not_rewritten() -> None:
    body = _record(112, 1) + b"\n"
    result = filter_delivered("k", body, 103)
    assert result.body is None and not result.changed and result.kept == 1


def test_filter_delivered_gzip_stays_gzip() -> None:
    body = gzip.compress(_record(103, 1) + b"\n" + _record(112, 2) + b"\n")
    result = filter_delivered("out/part.gz", body, 103)
    assert result.body is not None and gzip.decompress(result.body) == _record(112, 2) + b"\n"


def test_filter_delivered_reads_firehose_error_output() -> None:
    failed = orjson.dumps({"attemptsMade": 4, "rawData": base64.b64encode(_record(103, 1)).decode()})
    ok = orjson.dumps({"attemptsMade": 4, "rawData": base64.b64encode(_record(112, 1)).decode()})
    result = filter_delivered("errors/x", failed + b"\n" + ok + b"\n", 103)
    assert result.removed == 1 and result.body == ok + b"\n"


def _letter(data: bytes, key: str = "k", detail: str = "") -> bytes:
    return orjson.dumps(
        {
            "partition_key": key,
            "data_base64": base64.b64encode(data).decode(),
            "reason": "x",
            "detail": detail,
        }
    )


def test_filter_dead_letters_by_raw_record_partition_key_and_detail() -> None:
    lines = [
        _letter(b'{"customer_number": 103, "browse_history": []}'),  # the raw record names them
        _letter(b"garbage", key="103"),  # keyed by the customer number
        _letter(b"garbage", detail='near "customer_number": 103'),
        _letter(b'{"customer_number": 112, "browse_history": []}', key="112"),
        _letter(b"garbage", key="session-9"),
    ]
    result = filter_dead_letters(b"\n".join(lines) + b"\n", 103)
    assert result.removed == 3 and result.kept == 2
    assert result.body == lines[3] + b"\n" + lines[4] + b"\n"


def test_filter_embeddings_csv() -> None:
    body = b"id,embedding\n103,[0.1,0.2]\n1103,[0.3,0.4]\n112,[0.5,0.6]\n"
    result = filter_embeddings_csv(body, 103)
    assert result.removed == 1 and result.body == b"id,embedding\n1103,[0.3,0.4]\n112,[0.5,0.6]\n"
    assert filter_embeddings_csv(result.body, 103).body is None
    bought = b'id,bought\n1103,"[""S10_1678"",""S12_103""]"\n103,"[""S10_1678""]"\n112,[]\n'
    result = filter_embeddings_csv(bought, 103)
    assert result.removed == 1 and result.body == b'id,bought\n1103,"[""S10_1678"",""S12_103""]"\n112,[]\n'


def test_dead_letters_naming_the_customer_anywhere_the_rule_says_are_removed() -> None:
    """The defect found from outside: the number inside an array, or in a truncated record, under a
    partition key that is not the customer's, was missed."""
    lines = [
        _letter(b'{"customer_number": [103], "browse_history": []}'),
        _letter(b'{"session_id": "s", "customer_number": [103'),  # truncated inside the array
        _letter(b'{"customerNumber": "103"}'),
        _letter(b"garbage", key="x")[:-1] + b', "customer_numbers": [103]}',  # tagged when written
        _letter(b'{"customer_number": [1103], "browse_history": []}'),
        _letter(b'{"customer_number": [112, 1030]}'),
    ]
    result = filter_dead_letters(b"\n".join(lines) + b"\n", 103)
    assert result.removed == 4 and result.kept == 2
    assert result.body == lines[4] + b"\n" + lines[5] + b"\n"
