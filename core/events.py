"""The browsing event: the one input contract of the stream (see DESIGN.md).

``parse_event`` turns raw record bytes into a :class:`BrowsingEvent` or raises
:class:`~core.errors.BadRecord` with a short, stable reason (used as a metric label and
stored with the dead letter) and a human-readable detail.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import BadRecord

__all__ = [
    "MAX_BROWSE_ITEMS",
    "BrowseItem",
    "BrowsingEvent",
    "UserFeatures",
    "parse_event",
]

MAX_BROWSE_ITEMS = 1000
MAX_PRODUCT_CODE_LEN = 64
MAX_TEXT_LEN = 200


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """What the user tower reads. Categorical values are passed raw; normalisation is the model's."""

    city: str | None
    country: str | None
    credit_limit: float | None


@dataclass(frozen=True, slots=True)
class BrowseItem:
    product_code: str
    quantity: int
    in_shopping_cart: bool


@dataclass(frozen=True, slots=True)
class BrowsingEvent:
    """A validated event. ``raw`` is the decoded JSON object, kept unchanged for the output record."""

    customer_number: int
    features: UserFeatures
    browse_history: tuple[BrowseItem, ...]
    session_id: str | None
    event_time: datetime | None
    raw: dict[str, Any]


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRecord("bad_field_type", f"{key} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise BadRecord("bad_field_value", f"{key} is longer than {MAX_TEXT_LEN} characters")
    return value


def _quantity(value: Any, index: int) -> int:
    if isinstance(value, bool):
        raise BadRecord("bad_browse_history", f"browse_history[{index}].quantity must be a number")
    if isinstance(value, int):
        qty = value
    elif isinstance(value, str):
        try:
            qty = int(value.strip())
        except ValueError:
            raise BadRecord(
                "bad_browse_history", f"browse_history[{index}].quantity {value!r} is not an integer"
            ) from None
    elif isinstance(value, float) and value.is_integer():
        qty = int(value)
    else:
        raise BadRecord("bad_browse_history", f"browse_history[{index}].quantity must be an integer")
    if qty < 0:
        raise BadRecord("bad_browse_history", f"browse_history[{index}].quantity is negative")
    return qty


def _browse_item(item: Any, index: int) -> BrowseItem:
    if not isinstance(item, dict):
        raise BadRecord("bad_browse_history", f"browse_history[{index}] is not an object")
    code = item.get("product_code")
    if not isinstance(code, str) or not code.strip() or len(code) > MAX_PRODUCT_CODE_LEN:
        raise BadRecord("bad_browse_history", f"browse_history[{index}].product_code is missing or invalid")
    in_cart = item.get("in_shopping_cart", False)
    if not isinstance(in_cart, bool):
        raise BadRecord("bad_browse_history", f"browse_history[{index}].in_shopping_cart must be a boolean")
    return BrowseItem(code.strip(), _quantity(item.get("quantity", 1), index), in_cart)


def _event_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRecord("bad_event_time", "event_time must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRecord("bad_event_time", f"event_time {value[:40]!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_event(data: bytes) -> BrowsingEvent:
    """Decode and validate one record. Raises ``BadRecord`` for anything that is not a valid event."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord("not_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")

    customer = obj.get("customer_number")
    if customer is None:
        raise BadRecord("missing_customer_number")
    if isinstance(customer, bool) or not isinstance(customer, int):
        if isinstance(customer, str) and customer.strip().isdigit():
            customer = int(customer.strip())
        else:
            raise BadRecord(
                "bad_customer_number", f"customer_number must be an integer, got {customer!r}"[:200]
            )
    if not 0 <= customer <= 2**31 - 1:
        raise BadRecord("bad_customer_number", f"customer_number {customer} is out of range")

    history = obj.get("browse_history")
    if not isinstance(history, list) or not history:
        raise BadRecord("bad_browse_history", "browse_history must be a non-empty list")
    if len(history) > MAX_BROWSE_ITEMS:
        raise BadRecord("bad_browse_history", f"browse_history has more than {MAX_BROWSE_ITEMS} items")
    items = tuple(_browse_item(item, i) for i, item in enumerate(history))

    credit = obj.get("credit_limit")
    if credit is not None:
        if isinstance(credit, bool) or not isinstance(credit, int | float | str):
            raise BadRecord("bad_field_type", "credit_limit must be a number")
        try:
            credit = float(credit)
        except ValueError:
            raise BadRecord("bad_field_type", "credit_limit must be a number") from None
        if not math.isfinite(credit):
            raise BadRecord("bad_field_value", "credit_limit must be finite")

    session = obj.get("session_id")
    if session is not None and not isinstance(session, str | int):
        raise BadRecord("bad_field_type", "session_id must be a string")

    return BrowsingEvent(
        customer_number=customer,
        features=UserFeatures(_text(obj, "city"), _text(obj, "country"), credit),
        browse_history=items,
        session_id=None if session is None else str(session),
        event_time=_event_time(obj.get("event_time")),
        raw=obj,
    )
