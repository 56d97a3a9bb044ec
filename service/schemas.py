"""Request and response bodies: the OpenAPI document is generated from these.

What the API accepts is exactly what these say, no more: numbers are JSON numbers (``true`` and
``"100"`` are not), within documented bounds; text holds no control characters (PostgreSQL cannot
store NUL, and no product code or city has a tab); a query vector has the model's 32 dimensions and
is not all zeros. The JSON itself is parsed strictly (``service.routes``): UTF-8, no NaN or
Infinity, at most 1024 levels deep, no number that overflows a double.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from core.events import CREDIT_LIMIT_MAX

__all__ = [
    "EMBEDDING_DIM",
    "MAX_CREDIT_LIMIT",
    "MAX_ITEM_ID_LEN",
    "MAX_TEXT_LEN",
    "MAX_VECTOR_ABS",
    "TEXT_PATTERN",
    "Check",
    "Embedding",
    "ErrorBody",
    "Health",
    "Item",
    "ItemId",
    "Readiness",
    "RecommendationsOut",
    "SimilarItemsOut",
    "UserFeaturesIn",
    "Vector",
]

EMBEDDING_DIM = 32  # the two-tower model's embedding size (the vector(32) columns)
MAX_VECTOR_ABS = 1e6  # embeddings are unit vectors; anything this far out is not one
MAX_CREDIT_LIMIT = CREDIT_LIMIT_MAX  # one bound for events and the API (core.events)
MAX_TEXT_LEN = 200
MAX_ITEM_ID_LEN = 64
# printable text: no C0 control character (NUL included) and no DEL; lone surrogates cannot get
# here (the JSON parser and the query-string decoder refuse or replace them)
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def _not_all_zero(vector: list[float]) -> list[float]:
    if not any(vector):
        raise ValueError("the vector is all zeros: it has no direction to search along")
    return vector


Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_VECTOR_ABS, le=MAX_VECTOR_ABS)]
Vector = Annotated[
    list[Coordinate],
    Field(
        min_length=EMBEDDING_DIM,
        max_length=EMBEDDING_DIM,
        description=f"a user embedding: {EMBEDDING_DIM} numbers, each within "
        f"±{MAX_VECTOR_ABS:g}, not all zero (its direction is what counts: the answer is the same "
        "for any positive multiple)",
        json_schema_extra={"not": {"items": {"const": 0}}},
    ),
    AfterValidator(_not_all_zero),
]
Embedding = Annotated[
    list[float],
    Field(min_length=EMBEDDING_DIM, max_length=EMBEDDING_DIM, description="a unit-length user embedding"),
]
ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ITEM_ID_LEN,
        pattern=TEXT_PATTERN,
        description=f"a product code (1..{MAX_ITEM_ID_LEN} characters, no control characters)",
    ),
]
Text = Annotated[str, Field(max_length=MAX_TEXT_LEN, pattern=TEXT_PATTERN)]


class Item(BaseModel):
    id: str = Field(description="product code")
    score: float = Field(description="cosine similarity; higher is closer")


class SimilarItemsOut(BaseModel):
    product_code: str | None = Field(description="the browsed item the neighbours are of")
    similar_items: list[Item]


class RecommendationsOut(BaseModel):
    customer_number: int
    source: Literal["stream", "model", "popular"] = Field(
        description="stream: stored by the consumer from the customer's latest event, by the current "
        "model version; model: the current version's answer for a customer it knows; popular: the "
        "customer is unknown to the model"
    )
    model_version: str = Field(description="the model version that produced the answer")
    computed_at: datetime = Field(description="when the answer was computed (UTC)")
    event_id: str | None = Field(None, description="the browsing event behind a stream answer")
    recommended_items: list[Item]
    similar_items: SimilarItemsOut


class UserFeaturesIn(BaseModel):
    """One customer profile, as the lab's inference function takes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    city: Text | None = Field(None, description=f"up to {MAX_TEXT_LEN} characters, no control characters")
    country: Text | None = Field(None, description=f"up to {MAX_TEXT_LEN} characters, no control characters")
    creditlimit: (
        Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=MAX_CREDIT_LIMIT)] | None
    ) = Field(
        None,
        validation_alias=AliasChoices("creditlimit", "credit_limit"),
        description=f"credit limit: a JSON number, 0..{MAX_CREDIT_LIMIT:g} (`credit_limit` is accepted too)",
    )


class ErrorBody(BaseModel):
    error: str = Field(
        description="a short, stable code: invalid_request, unauthorized, not_found, method_not_allowed, "
        "request_timeout, too_large, model_not_ready, unavailable, internal_error"
    )
    reason: str = Field(description="what is wrong, for people")
    request_id: str | None = None
    detail: list[dict[str, Any]] | None = Field(None, description="per-field problems (invalid_request)")


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    reason: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model_version: str | None
    checks: dict[str, Check]
