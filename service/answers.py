"""How ``GET /recommendations/{customer_number}`` decides: stream, then model, then popular.

Answers never outlive their model: a streamed answer is served only when the version that computed
it is the one this API answers with (when it names a version the API has not seen, the API first
checks for a newer active version and switches to it). Otherwise it is stale, however recent: the
customer is answered from the current version as if there were none. So every item of an answer is
in the catalog of the version the answer names, and of the API's other routes.

The body is built from JSON fragments: a streamed answer's items go out as the database returned
them (decoded only to cut them to a shorter ``limit``), and a known customer's model answer is the
one the version computed when it was loaded (``customer_answers``), not a scan per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from core.ports import LatestStore
from core.recommendations import ScoredItem, Source
from infra.latest import StoredAnswers, StreamedAnswer
from service.ports import AnswerLookup
from service.state import ModelSlot

__all__ = ["PRECOMPUTED_DEPTH", "Answer", "LatestOnly", "answer_for"]

PRECOMPUTED_DEPTH = 100
"""Items ``recsys load-vectors`` keeps per customer (``model_store.customer_answers.DEPTH``): a
larger ``limit`` is computed per request."""


class LatestOnly:
    """An ``AnswerLookup`` over a ``LatestStore``: streamed answers only (the tests' in-memory store)."""

    def __init__(self, latest: LatestStore) -> None:
        self.latest = latest

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        row = await self.latest.get(customer_number)
        if row is None:
            return StoredAnswers(None, None)
        rec = row.recommendation
        similar = rec.similar_items
        return StoredAnswers(
            StreamedAnswer(
                rec.model_version,
                row.event_id,
                row.computed_at,
                orjson.dumps([i.to_json() for i in rec.recommended_items]).decode(),
                orjson.dumps(similar.to_json()).decode(),
                len(rec.recommended_items),
                len(similar.similar_items),
            ),
            None,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer; ``recommended_items`` and ``similar_items`` are its JSON fragments."""

    customer_number: int
    source: Source
    model_version: str
    computed_at: datetime
    recommended_items: bytes  # a JSON array of {id, score}
    similar_items: bytes  # a JSON object {product_code, similar_items}
    event_id: str | None = None

    def body(self) -> bytes:
        """The response body (the documented ``RecommendationsOut``)."""
        head = orjson.dumps(
            {
                "customer_number": self.customer_number,
                "source": self.source.value,
                "model_version": self.model_version,
                "computed_at": self.computed_at.astimezone(UTC).isoformat(),
                "event_id": self.event_id,
            }
        )
        return b"".join(
            (
                head[:-1],
                b',"recommended_items":',
                self.recommended_items,
                b',"similar_items":',
                self.similar_items,
                b"}",
            )
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.body())
        return body


_NO_SIMILAR = b'{"product_code":null,"similar_items":[]}'


def _items(items: tuple[ScoredItem, ...] | list[ScoredItem]) -> bytes:
    return orjson.dumps([item.to_json() for item in items])


def _streamed(customer_number: int, row: StreamedAnswer, limit: int) -> Answer:
    recommended, similar = row.recommended.encode(), row.similar.encode()
    if row.recommended_count > limit:
        recommended = orjson.dumps(orjson.loads(recommended)[:limit])
    if row.similar_count > limit:
        parsed = orjson.loads(similar)
        parsed["similar_items"] = parsed["similar_items"][:limit]
        similar = orjson.dumps(parsed)
    return Answer(
        customer_number, Source.STREAM, row.model_version, row.computed_at, recommended, similar, row.event_id
    )


async def answer_for(
    customer_number: int,
    limit: int,
    stored: AnswerLookup,
    model: ModelSlot,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    *,
    precomputed: bool = True,
) -> Answer:
    """The customer's streamed answer when the current version computed it, else the current
    version's answer for a customer it knows, else its popular items (see the module docstring).

    While no model is loaded, a streamed answer is served as it is (nothing says which version is
    current); without one it is ``ModelNotReady``. ``precomputed=False`` (the API does not leave
    out what customers bought, ``RECSYS_EXCLUDE_BOUGHT=false``, unlike the stored answers) computes
    model answers per request.
    """
    loaded = model.loaded
    version = loaded.model_version if loaded is not None else None
    found = await stored.lookup(customer_number, version, limit)
    row = found.stream
    if row is not None and (
        loaded is None or row.model_version == version or await model.is_current(row.model_version)
    ):
        return _streamed(customer_number, row, limit)
    recommender = model.get()
    if recommender.model_version != version:  # switched meanwhile: what was looked up is the old one's
        found = StoredAnswers(None, None)
    if found.model is not None and limit <= PRECOMPUTED_DEPTH and precomputed:
        return Answer(
            customer_number, Source.MODEL, recommender.model_version, now(), _items(found.model), _NO_SIMILAR
        )
    rec = await recommender.recommend_customer(customer_number, limit)
    if rec is not None and not rec.fallback:
        items = rec.recommended_items[:limit]
        similar = rec.similar_items
        similar_json = orjson.dumps(
            {
                "product_code": similar.product_code,
                "similar_items": [i.to_json() for i in similar.similar_items[:limit]],
            }
        )
        return Answer(customer_number, Source.MODEL, rec.model_version, now(), _items(items), similar_json)
    popular = await recommender.popular_items(limit)
    return Answer(
        customer_number,
        Source.POPULAR,
        recommender.model_version,
        now(),
        _items(popular[:limit]),
        _NO_SIMILAR,
    )
