"""What the API needs from the recommender beyond ``core.ports.Recommender``.

The model store's ``ModelRecommender`` provides all of it; the tests use a deterministic fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.events import UserFeatures
from core.ports import Recommender
from core.recommendations import Recommendation, ScoredItem
from infra.latest import StoredAnswers

__all__ = ["AnswerLookup", "LabRecommender", "ServingRecommender"]


class AnswerLookup(Protocol):
    """What is stored for a customer (``infra.latest.PgStoredAnswers``; ``service.answers.LatestOnly``
    over any ``LatestStore``)."""

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        """The customer's streamed answer (any version) and ``model_version``'s precomputed answer
        (its first ``limit`` items; ``None`` when the version holds none for the customer). One
        round trip; raises ``DatabaseUnavailable``."""
        ...


class LabRecommender(Recommender, Protocol):
    """``Recommender`` plus the lab's inference operations and the model's lifetime."""

    async def user_embeddings(self, features: Sequence[UserFeatures]) -> list[list[float]]:
        """One user-tower embedding per feature row, in order (the lab's ``user_embeddings``)."""
        ...

    async def items_from_vector(self, vector: Sequence[float], k: int) -> list[ScoredItem]:
        """The ``k`` items nearest to ``vector``.

        Raises a ``UserError`` subclass when the vector has the wrong dimension or non-finite values.
        """
        ...

    async def close(self) -> None:
        """Release what the recommender holds (executors); the pool is not its to close."""
        ...


class ServingRecommender(LabRecommender, Protocol):
    """Everything the HTTP API asks of the model."""

    async def recommend_customer(self, customer_number: int, k: int) -> Recommendation | None:
        """The model's answer for a known customer, from the stored profile and the current model.

        Returns ``None`` when the current model version does not know the customer (the API then
        answers with popular items). CPU work off the event loop.
        """
        ...
