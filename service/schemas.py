"""Request and response bodies: the OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

__all__ = [
    "MAX_VECTOR_DIM",
    "Check",
    "ErrorBody",
    "Health",
    "Item",
    "Readiness",
    "RecommendationsOut",
    "SimilarItemsOut",
    "UserFeaturesIn",
    "Vector",
]

MAX_VECTOR_DIM = 4096

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[
    list[FiniteFloat],
    Field(min_length=1, max_length=MAX_VECTOR_DIM, description="an embedding: finite numbers"),
]


class Item(BaseModel):
    id: str = Field(description="product code")
    score: float = Field(description="cosine similarity; higher is closer")


class SimilarItemsOut(BaseModel):
    product_code: str | None = Field(description="the browsed item the neighbours are of")
    similar_items: list[Item]


class RecommendationsOut(BaseModel):
    customer_number: int
    source: Literal["stream", "model", "popular"] = Field(
        description="stream: stored by the consumer from the customer's latest event; model: computed "
        "now from the customer's profile; popular: the customer is unknown to the model"
    )
    model_version: str = Field(description="the model version that produced the answer")
    computed_at: datetime = Field(description="when the answer was computed (UTC)")
    event_id: str | None = Field(None, description="the browsing event behind a stream answer")
    recommended_items: list[Item]
    similar_items: SimilarItemsOut


class UserFeaturesIn(BaseModel):
    """One customer profile, as the lab's inference function takes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    city: str | None = Field(None, max_length=200)
    country: str | None = Field(None, max_length=200)
    creditlimit: FiniteFloat | None = Field(
        None, validation_alias=AliasChoices("creditlimit", "credit_limit"), description="credit limit"
    )


class ErrorBody(BaseModel):
    error: str = Field(description="a short, stable code: invalid_request, not_found, unauthorized, ...")
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
