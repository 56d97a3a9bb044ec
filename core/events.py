"""The browsing event: the one input contract of the stream (see DESIGN.md).

``parse_event`` turns raw record bytes into a :class:`BrowsingEvent` or raises
:class:`~core.errors.BadRecord` with a short, stable reason (used as a metric label and
stored with the dead letter) and a human-readable detail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import BadRecord

__all__ = [
    "CREDIT_LIMIT_MAX",
    "CUSTOMER_NUMBER_MAX",
    "MAX_BROWSE_ITEMS",
    "MAX_QUANTITY",
    "BrowseItem",
    "BrowsingEvent",
    "Loads",
    "UserFeatures",
    "parse_event",
]

MAX_BROWSE_ITEMS = 1000
MAX_PRODUCT_CODE_LEN = 64
MAX_TEXT_LEN = 200
MAX_QUANTITY = 1_000_000
CUSTOMER_NUMBER_MAX = 2**31 - 1  # PostgreSQL's integer: the key of every customer-keyed table
# the accepted credit_limit is 0..this, in events and in the API (the shop's largest is ~2.3e5)
CREDIT_LIMIT_MAX = 1e9


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


def _is_unicode(text: str) -> bool:
    """False for text holding lone surrogates (JSON allows ``"\\ud800"``; UTF-8 cannot carry it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRecord("bad_field_type", f"{key} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise BadRecord("bad_field_value", f"{key} is longer than {MAX_TEXT_LEN} characters")
    if not _is_unicode(value):
        raise BadRecord("bad_field_value", f"{key} holds a lone surrogate (not Unicode text)")
    return value


def _quantity(value: Any, index: int) -> int:
    if isinstance(value, bool):
        raise BadRecord("bad_browse_history", f"browse_history[{index}].quantity must be a number")
    if isinstance(value, int):
        qty = value
    elif isinstance(value, str):
        try:
            qty = int(value.strip()) if len(value) <= 20 else -1
        except ValueError:
            raise BadRecord(
                "bad_browse_history", f"browse_history[{index}].quantity {value!r} is not an integer"
            ) from None
    elif isinstance(value, float) and value.is_integer():
        qty = int(value)
    else:
        raise BadRecord("bad_browse_history", f"browse_history[{index}].quantity must be an integer")
    if not 0 <= qty <= MAX_QUANTITY:
        raise BadRecord(
            "bad_browse_history", f"browse_history[{index}].quantity is outside 0..{MAX_QUANTITY}"
        )
    return qty


def _browse_item(item: Any, index: int) -> BrowseItem:
    if not isinstance(item, dict):
        raise BadRecord("bad_browse_history", f"browse_history[{index}] is not an object")
    code = item.get("product_code")
    # product codes reach SQL and the latest table: printable text only (no NUL or other control
    # characters, no lone surrogates), so PostgreSQL never refuses one
    if (
        not isinstance(code, str)
        or not code.strip()
        or len(code) > MAX_PRODUCT_CODE_LEN
        or not code.isprintable()
    ):
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
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except ValueError:
        raise BadRecord("bad_event_time", f"event_time {value[:40]!r} is not ISO-8601") from None
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise BadRecord("bad_event_time", f"event_time {value[:40]!r} is out of range") from None


def _customer_number(value: Any) -> int:
    if value is None:
        raise BadRecord("missing_customer_number")
    customer = value
    if isinstance(value, bool) or not isinstance(value, int):
        text = value.strip() if isinstance(value, str) else ""
        # ASCII digits only: str.isdigit() also accepts "²" and "١٢", which int() refuses
        if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()):
            shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
            raise BadRecord("bad_customer_number", f"customer_number must be an integer, got {shown}")
        customer = int(text)
    if not 0 <= customer <= CUSTOMER_NUMBER_MAX:
        raise BadRecord("bad_customer_number", f"customer_number {customer} is out of range"[:200])
    return int(customer)


def _credit_limit(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRecord("bad_field_type", "credit_limit must be a number")
    if isinstance(value, str) and len(value) > 64:
        raise BadRecord("bad_field_type", "credit_limit must be a number")
    try:
        credit = float(value)
    except ValueError:
        raise BadRecord("bad_field_type", "credit_limit must be a number") from None
    except OverflowError:  # an integer beyond float's range
        raise BadRecord("bad_field_value", "credit_limit is out of range") from None
    if not math.isfinite(credit):
        raise BadRecord("bad_field_value", "credit_limit must be finite")
    if not 0 <= credit <= CREDIT_LIMIT_MAX:
        raise BadRecord("bad_field_value", f"credit_limit is outside 0..{CREDIT_LIMIT_MAX:g}")
    return credit


Loads = Callable[[bytes], Any]
"""Decodes one record's JSON; must accept and refuse exactly what ``json.loads`` does."""


def parse_event(data: bytes, loads: Loads = json.loads) -> BrowsingEvent:
    """Decode and validate one record. Raises ``BadRecord`` for anything that is not a valid event.

    ``loads`` may be a faster decoder with the standard library's results (the consumer's tries
    orjson first and falls back to ``json.loads`` on whatever orjson refuses)."""
    try:
        obj = loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord("not_json", str(exc)[:200]) from None
    except RecursionError:
        raise BadRecord("not_json", "nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")

    customer = _customer_number(obj.get("customer_number"))

    history = obj.get("browse_history")
    if not isinstance(history, list) or not history:
        raise BadRecord("bad_browse_history", "browse_history must be a non-empty list")
    if len(history) > MAX_BROWSE_ITEMS:
        raise BadRecord("bad_browse_history", f"browse_history has more than {MAX_BROWSE_ITEMS} items")
    items = tuple(_browse_item(item, i) for i, item in enumerate(history))

    credit = _credit_limit(obj.get("credit_limit"))

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
