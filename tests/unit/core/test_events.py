"""The browsing-event contract: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from core.errors import BadRecord
from core.events import CREDIT_LIMIT_MAX, MAX_BROWSE_ITEMS, parse_event

LAB_EVENT = {
    "session_id": "a1b2",
    "customer_number": 103,
    "city": "Nantes",
    "country": "France",
    "credit_limit": 21000.0,
    "browse_history": [
        {"product_code": "S10_1678", "quantity": 2, "in_shopping_cart": True},
        {"product_code": "S18_2238", "quantity": "1", "in_shopping_cart": False},
    ],
}


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_lab_event_parses_with_string_quantity() -> None:
    event = parse_event(encode(LAB_EVENT))
    assert event.customer_number == 103
    assert event.features.country == "France"
    assert event.features.credit_limit == 21000.0
    assert [(b.product_code, b.quantity, b.in_shopping_cart) for b in event.browse_history] == [
        ("S10_1678", 2, True),
        ("S18_2238", 1, False),
    ]
    assert event.raw == LAB_EVENT
    assert event.event_time is None


def test_event_time_is_normalised_to_utc() -> None:
    event = parse_event(encode({**LAB_EVENT, "event_time": "2026-01-02T03:04:05+02:00"}))
    assert event.event_time == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    naive = parse_event(encode({**LAB_EVENT, "event_time": "2026-01-02T03:04:05Z"}))
    assert naive.event_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_optional_profile_fields_may_be_missing() -> None:
    event = parse_event(encode({"customer_number": 7, "browse_history": [{"product_code": "S1"}]}))
    assert event.features.city is None and event.features.credit_limit is None
    assert event.browse_history[0].quantity == 1 and not event.browse_history[0].in_shopping_cart


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not json", "not_json"),
        (b"{broken", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (encode({k: v for k, v in LAB_EVENT.items() if k != "customer_number"}), "missing_customer_number"),
        (encode({**LAB_EVENT, "customer_number": "abc"}), "bad_customer_number"),
        (encode({**LAB_EVENT, "customer_number": True}), "bad_customer_number"),
        (encode({**LAB_EVENT, "customer_number": -1}), "bad_customer_number"),
        (encode({**LAB_EVENT, "browse_history": []}), "bad_browse_history"),
        (encode({**LAB_EVENT, "browse_history": "S10_1678"}), "bad_browse_history"),
        (encode({**LAB_EVENT, "browse_history": [{"quantity": 1}]}), "bad_browse_history"),
        (
            encode({**LAB_EVENT, "browse_history": [{"product_code": "S1", "quantity": "two"}]}),
            "bad_browse_history",
        ),
        (
            encode({**LAB_EVENT, "browse_history": [{"product_code": "S1", "quantity": -3}]}),
            "bad_browse_history",
        ),
        (
            encode({**LAB_EVENT, "browse_history": [{"product_code": "S1", "in_shopping_cart": "yes"}]}),
            "bad_browse_history",
        ),
        (
            encode({**LAB_EVENT, "browse_history": [{"product_code": "S1"}] * (MAX_BROWSE_ITEMS + 1)}),
            "bad_browse_history",
        ),
        (encode({**LAB_EVENT, "credit_limit": "lots"}), "bad_field_type"),
        (encode({**LAB_EVENT, "credit_limit": -1.0}), "bad_field_value"),
        (encode({**LAB_EVENT, "credit_limit": 1.0000001e9}), "bad_field_value"),
        (encode({**LAB_EVENT, "city": 12}), "bad_field_type"),
        (encode({**LAB_EVENT, "event_time": "yesterday"}), "bad_event_time"),
    ],
)
def test_bad_records_are_refused_with_a_stable_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as info:
        parse_event(data)
    assert info.value.reason == reason


def test_credit_limit_bounds_are_the_apis() -> None:
    """Events and the API's /user_embeddings accept the same credit limits: 0..CREDIT_LIMIT_MAX."""
    from service.schemas import MAX_CREDIT_LIMIT

    assert MAX_CREDIT_LIMIT == CREDIT_LIMIT_MAX
    for edge in (0, CREDIT_LIMIT_MAX, str(CREDIT_LIMIT_MAX)):
        assert parse_event(encode({**LAB_EVENT, "credit_limit": edge})).features.credit_limit == float(edge)


def test_numeric_string_customer_number_is_accepted() -> None:
    assert parse_event(encode({**LAB_EVENT, "customer_number": " 112 "})).customer_number == 112
