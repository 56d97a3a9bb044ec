"""In-memory doubles of every port the shard worker, the coordinator and the API touch.

Shipped next to the wiring (as ``bytewax.testing`` ships its test doubles): tests and benchmarks hand
them to ``recsys.runtime`` or to a ``ShardWorker``. Each records *state* (what was delivered,
checkpointed, dead-lettered, stored), so tests assert on outcomes rather than on calls, and each
keeps the rules of the Protocol it stands for: :func:`_conforms` types every double as its port,
so mypy fails when a port changes and a double does not.

Also here: :data:`POISON`, one record of every kind known to have broken a shard worker, with the
reason it is dead-lettered for (the fuzzers' hypothesis strategy of hostile records is the
``hostile_record`` fixture in tests/conftest.py: hypothesis is a test dependency, not the image's).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from consumer.kinesis import RecordsPage, ShardInfo, StartAt
from consumer.leases import HeldLease, LeaseRow, Renewal
from consumer.ports import DeadLetterSink, LeaseTable, RecordReader, RecordSink, Suppression
from core.checkpointing import SHARD_END, TRIM_HORIZON, Position
from core.deadletters import DeadLetter
from core.errors import DatabaseUnavailable, DataRejected, LeaseLost, NotFoundError, UserError
from core.events import UserFeatures
from core.leases import LeaseView
from core.ports import LatestStore, Recommender
from core.recommendations import LatestRow, Recommendation, RecommendRequest, ScoredItem, SimilarItems
from service.ports import ServingRecommender

__all__ = [
    "POISON",
    "FakeClock",
    "FakeLeaseTable",
    "FakeReader",
    "FakeRecommender",
    "FakeServingRecommender",
    "FakeSuppression",
    "MemoryLatestStore",
    "RecordingDeadLetters",
    "RecordingSink",
]

K = TypeVar("K")


class FakeClock:
    """A monotonic clock that moves only when told (lease expiry without sleeping)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ----------------------------------------------------------------------------------- the stream
class FakeReader:
    """``RecordReader`` over scripted pages: each ``get_records`` returns (or raises) the next one;
    when they run out, empty pages at the tip of an open shard. ``starts`` records every iterator
    asked for."""

    def __init__(
        self, pages: Sequence[RecordsPage | Exception] = (), shards: Sequence[ShardInfo] = ()
    ) -> None:
        self.pages = list(pages)
        self.shards = list(shards)
        self.starts: list[StartAt] = []

    async def list_shards(self) -> list[ShardInfo]:
        return list(self.shards)

    async def iterator(self, shard_id: str, start: StartAt) -> str:
        self.starts.append(start)
        return f"it-{len(self.starts)}"

    async def get_records(self, iterator: str, limit: int) -> RecordsPage:
        if not self.pages:
            return RecordsPage([], iterator, 0, [])
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page


@dataclass
class _Row:
    owner: str | None = None
    counter: int = 0
    checkpoint: tuple[str | None, int] = (None, 0)
    parents: tuple[str, ...] = ()
    ended: bool = False
    switches: int = 0
    handoff_to: str | None = None
    load: float = 0.0
    cpu: float | None = None


class FakeLeaseTable:
    """``LeaseTable`` in memory, conditional on the lease counter like the real one.

    ``checkpoints`` records every checkpoint written, in order: ``(position, shard_end)``.
    :meth:`steal` moves a lease to another owner (the counter changes), so this worker's next write
    raises ``LeaseLost``; ``down = True`` makes every call raise ``DatabaseUnavailable``.
    """

    def __init__(self, worker_id: str = "worker-a") -> None:
        self._worker_id = worker_id
        self.rows: dict[str, _Row] = {}
        self.checkpoints: list[tuple[Position | None, bool]] = []
        self.checkpointed = asyncio.Event()
        self.down = False

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def _up(self) -> None:
        if self.down:
            raise DatabaseUnavailable("the lease table cannot be reached (down = True)")

    def held(self, shard_id: str, checkpoint: Position | None = None) -> HeldLease:
        """A lease this worker holds (a row created as taken), resuming after ``checkpoint``."""
        row = self.rows.setdefault(shard_id, _Row())
        row.owner, row.counter = self.worker_id, row.counter + 1
        if checkpoint is not None:
            row.checkpoint = (checkpoint.sequence, checkpoint.sub)
        seq, sub = row.checkpoint
        return HeldLease(shard_id, row.counter, seq, sub)

    def steal(self, shard_id: str, thief: str = "worker-b") -> None:
        row = self.rows[shard_id]
        row.owner, row.counter, row.switches = thief, row.counter + 1, row.switches + 1

    async def add_shards(self, shards: Sequence[tuple[str, Sequence[str]]]) -> int:
        self._up()
        listed = {s for s, _ in shards}
        added = 0
        for shard_id, parents in shards:
            if shard_id in self.rows:
                continue
            start = TRIM_HORIZON if any(p in listed or p in self.rows for p in parents) else None
            self.rows[shard_id] = _Row(checkpoint=(start, 0), parents=tuple(parents))
            added += 1
        return added

    async def list(self) -> list[LeaseRow]:
        self._up()
        return [
            LeaseRow(
                shard_id,
                r.owner,
                r.counter,
                r.checkpoint[0],
                r.checkpoint[1],
                r.parents,
                r.ended,
                r.switches,
                r.handoff_to,
                r.load,
                r.cpu,
            )
            for shard_id, r in sorted(self.rows.items())
        ]

    async def take(self, observed: LeaseView) -> HeldLease | None:
        self._up()
        row = self.rows.get(observed.shard_id)
        if row is None or row.counter != observed.counter or row.ended:
            return None
        row.owner, row.counter, row.switches = self.worker_id, row.counter + 1, row.switches + 1
        return HeldLease(observed.shard_id, row.counter, row.checkpoint[0], row.checkpoint[1])

    def _check(self, lease: HeldLease) -> _Row:
        row = self.rows.get(lease.shard_id)
        if lease.lost or row is None or row.owner != self.worker_id or row.counter != lease.counter:
            lease.lost = True
            raise LeaseLost(f"lease on {lease.shard_id} was taken by another worker")
        return row

    async def renew(self, lease: HeldLease) -> None:
        self._up()
        row = self._check(lease)
        row.counter += 1
        lease.counter = row.counter

    async def checkpoint(
        self, lease: HeldLease, position: Position | None, *, shard_end: bool = False
    ) -> None:
        self._up()
        if position is None and not shard_end:
            return
        row = self._check(lease)
        row.checkpoint = (
            (SHARD_END, 0) if shard_end or position is None else (position.sequence, position.sub)
        )
        row.ended = shard_end
        lease.checkpoint_seq, lease.checkpoint_sub = row.checkpoint
        self.checkpoints.append((position, shard_end))
        self.checkpointed.set()

    async def release(self, lease: HeldLease) -> bool:
        self._up()
        try:
            row = self._check(lease)
        except LeaseLost:
            return False
        self._record(row, lease)
        row.owner, row.counter, row.handoff_to = None, row.counter + 1, None
        lease.lost = True
        return True

    @staticmethod
    def _record(row: _Row, lease: HeldLease) -> None:
        if lease.unrecorded is not None:
            row.checkpoint = (lease.unrecorded.sequence, lease.unrecorded.sub)

    async def listen(self, on_event: Callable[[str, str], None]) -> bool:
        return False

    async def close(self) -> None:
        return None

    async def renew_all(
        self, leases: Sequence[HeldLease], loads: Mapping[str, float], cpu: float | None
    ) -> Renewal:
        self._up()
        held = {x.shard_id: x for x in leases if not x.lost}
        lost: list[HeldLease] = []
        requested: list[tuple[HeldLease, str]] = []
        adopted: list[HeldLease] = []
        for shard_id, row in sorted(self.rows.items()):
            if row.owner != self.worker_id:
                continue
            row.counter += 1
            row.cpu = cpu
            if shard_id in loads:
                row.load = loads[shard_id]
            lease = held.pop(shard_id, None)
            if lease is not None and lease.counter == row.counter - 1:
                lease.counter = row.counter
                if row.handoff_to is not None and row.handoff_to != self.worker_id:
                    lease.handoff_to = row.handoff_to
                    requested.append((lease, row.handoff_to))
                continue
            if lease is not None:
                lease.lost = True
                lost.append(lease)
            if not row.ended:
                adopted.append(HeldLease(shard_id, row.counter, row.checkpoint[0], row.checkpoint[1]))
        for lease in held.values():
            lease.lost = True
            lost.append(lease)
        return Renewal(tuple(lost), tuple(requested), tuple(adopted))

    async def request_handoff(self, observed: LeaseView) -> bool:
        self._up()
        row = self.rows.get(observed.shard_id)
        if row is None or row.owner != observed.owner or row.handoff_to is not None or row.ended:
            return False
        row.handoff_to = self.worker_id
        return True

    async def cancel_requests(self) -> int:
        self._up()
        mine = [r for r in self.rows.values() if r.handoff_to == self.worker_id and r.owner != self.worker_id]
        for row in mine:
            row.handoff_to = None
        return len(mine)

    async def hand_over(self, lease: HeldLease) -> float | None:
        self._up()
        try:
            row = self._check(lease)
        except LeaseLost:
            return None
        if row.handoff_to is None:
            return None
        self._record(row, lease)
        row.owner, row.handoff_to = row.handoff_to, None
        row.counter, row.switches = row.counter + 1, row.switches + 1
        lease.lost = True
        return 0.0


class RecordingSink:
    """``RecordSink`` that accepts everything at once; ``delivered`` holds each record as decoded
    JSON, in delivery order (so a test reads what Firehose would have stored)."""

    def __init__(self) -> None:
        self.delivered: list[dict[str, Any]] = []

    async def deliver(self, items: Sequence[tuple[K, bytes]], on_ack: Callable[[K], None]) -> None:
        for key, payload in items:
            if not payload.endswith(b"\n"):
                raise ValueError("a record must end with a newline")
            self.delivered.append(json.loads(payload))
            on_ack(key)


class RecordingDeadLetters:
    """``DeadLetterSink`` keeping ``letters``; each is encoded to its stored line first (the real
    store's encoding), so a letter the format cannot hold fails here as it would there."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.lines: list[bytes] = []
        self.down = False

    async def put(self, letters: Sequence[DeadLetter]) -> None:
        if self.down:
            raise DatabaseUnavailable("the dead-letter store cannot be reached (down = True)")
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        self.lines.extend(orjson.dumps(letter.to_json(now)) for letter in letters)
        self.letters.extend(letters)


class FakeSuppression:
    """``Suppression`` over a fixed set of customers."""

    def __init__(self, customers: Sequence[int] = ()) -> None:
        self.customers = set(customers)

    async def maybe_refresh(self) -> bool:
        return False

    def contains(self, customer_number: int) -> bool:
        return customer_number in self.customers


# --------------------------------------------------------------------------------- the model
class FakeRecommender:
    """``Recommender`` with deterministic answers derived from each request: ``items`` ids
    ``P<(customer + i) % 97>`` and the first browsed code's neighbour ``near-<code>``.

    State: ``batches`` (the size of every batch answered). Faults: the first ``failures`` calls
    raise ``DatabaseUnavailable``; a batch holding a request ``refuse(request)`` is true of raises
    ``DataRejected`` (as PostgreSQL refuses a whole statement for one bad value). ``next_version``
    is switched to by the next :meth:`refresh`.
    """

    def __init__(
        self,
        version: str = "fake-1",
        *,
        items: int = 1,
        failures: int = 0,
        refuse: Callable[[RecommendRequest], bool] | None = None,
    ) -> None:
        self._version = version
        self.items = items
        self.failures = failures
        self.refuse = refuse
        self.next_version: str | None = None
        self.batches: list[int] = []
        self._answers: dict[tuple[int, str | None, int, str], Recommendation] = {}

    @property
    def model_version(self) -> str:
        return self._version

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("vector store down")
        if self.refuse is not None and any(self.refuse(r) for r in requests):
            raise DataRejected("the vector store refused a value of the batch")
        self.batches.append(len(requests))
        out = []
        for r in requests:
            first = r.browse_history[0].product_code if r.browse_history else None
            key = ((r.customer_number or 0) % 97, first, self.items, self._version)
            answer = self._answers.get(key)
            if answer is None:  # built once per key: the fake costs (nearly) nothing per request
                answer = self._answers[key] = self._answer(*key)
            out.append(answer)
        return out

    @staticmethod
    def _answer(customer: int, first: str | None, items: int, version: str) -> Recommendation:
        return Recommendation(
            tuple(ScoredItem(f"P{(customer + i) % 97}", round(0.9 - i / 100, 6)) for i in range(items)),
            SimilarItems(first, (ScoredItem(f"near-{first}", 0.5),) if first else ()),
            version,
        )

    async def refresh(self) -> bool:
        if self.next_version is None or self.next_version == self._version:
            return False
        self._version, self.next_version = self.next_version, None
        return True

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        return [ScoredItem(f"near-{product_code}", 0.5)][:k]

    async def popular_items(self, k: int) -> list[ScoredItem]:
        return [ScoredItem("P0", 1.0)][:k]


class MemoryLatestStore:
    """``LatestStore`` in memory: ``rows`` per customer, replaced only by a newer (event_time,
    event_id); ``reads`` lists the customers read. A call holding a row ``refuse(row)`` is true of
    raises ``DataRejected`` and stores nothing (one statement, as PostgreSQL does)."""

    def __init__(
        self,
        rows: Mapping[int, LatestRow] | None = None,
        *,
        refuse: Callable[[LatestRow], bool] | None = None,
    ) -> None:
        self.rows: dict[int, LatestRow] = dict(rows or {})
        self.reads: list[int] = []
        self.refuse = refuse

    async def upsert_many(self, rows: Sequence[LatestRow]) -> None:
        if self.refuse is not None and any(self.refuse(r) for r in rows):
            raise DataRejected("the store refused a value of the call")
        for row in rows:
            current = self.rows.get(row.customer_number)
            if current is None or (current.event_time, current.event_id) < (row.event_time, row.event_id):
                self.rows[row.customer_number] = row

    async def get(self, customer_number: int) -> LatestRow | None:
        self.reads.append(customer_number)
        return self.rows.get(customer_number)


# ------------------------------------------------------------------------- the API's model
SERVING_DIM = 32
SERVING_ITEMS = tuple(f"S10_{1000 + i}" for i in range(40))
# far from the shop's customer numbers: other tests store streamed answers for those in a shared
# database, and a stored answer takes precedence over the model path
KNOWN_CUSTOMER = 2_000_000_103
UNKNOWN_CUSTOMER = 2_000_000_999
KNOWN_CUSTOMERS = frozenset({KNOWN_CUSTOMER, 2_000_000_112, 2_000_000_114})


class BadServingVector(UserError):
    """What the fake refuses a query vector with (the model store's ``BadVector`` is a UserError)."""


def _vector(seed: str) -> list[float]:
    digest = hashlib.sha256(seed.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:SERVING_DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _ranked(seed: str, k: int, banned: frozenset[str] = frozenset()) -> list[ScoredItem]:
    order = sorted(SERVING_ITEMS, key=lambda code: hashlib.sha256(f"{seed}/{code}".encode()).hexdigest())
    picked = [code for code in order if code not in banned][:k]
    return [ScoredItem(code, round(0.99 - 0.01 * i, 6)) for i, code in enumerate(picked)]


class FakeServingRecommender:
    """``ServingRecommender`` with deterministic answers from hashes over :data:`SERVING_ITEMS`;
    knows :data:`KNOWN_CUSTOMERS` (or answers ``known`` customers with the given answers; its
    popular items are ``popular`` when given). ``active``: the version a ``refresh()`` switches to
    (``None``: its own; a test sets it to load a newer one). State: ``asked_customers``,
    ``popular_asked``, ``refreshes``, ``closed``."""

    def __init__(
        self,
        version: str = "fake-v1",
        *,
        known: Mapping[int, Recommendation] | None = None,
        popular: Sequence[ScoredItem] | None = None,
    ) -> None:
        self._version = version
        self.known = known
        self.popular = popular
        self.asked_customers: list[int] = []
        self.popular_asked: list[int] = []
        self.active: str | None = None
        self.refreshes = 0
        self.closed = False

    @property
    def model_version(self) -> str:
        return self._version

    async def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        return [
            Recommendation(tuple(_ranked(str(r.features), r.k)), SimilarItems(None, ()), self._version)
            for r in requests
        ]

    async def recommend_customer(self, customer_number: int, k: int) -> Recommendation | None:
        self.asked_customers.append(customer_number)
        if self.known is not None:
            return self.known.get(customer_number)
        if customer_number not in KNOWN_CUSTOMERS:
            return None
        return Recommendation(
            tuple(_ranked(f"customer/{customer_number}", k)), SimilarItems(None, ()), self._version
        )

    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        if product_code not in SERVING_ITEMS:
            raise NotFoundError(f"unknown item {product_code!r}")
        return _ranked(f"item/{product_code}", k, frozenset({product_code}))

    async def popular_items(self, k: int) -> list[ScoredItem]:
        self.popular_asked.append(k)
        if self.popular is not None:
            return list(self.popular)
        return [ScoredItem(code, round(1.0 / (i + 1), 6)) for i, code in enumerate(SERVING_ITEMS[:k])]

    async def user_embeddings(self, features: Sequence[UserFeatures]) -> list[list[float]]:
        return [_vector(f"{f.city}|{f.country}|{f.credit_limit}") for f in features]

    async def items_from_vector(self, vector: Sequence[float], k: int) -> list[ScoredItem]:
        if len(vector) != SERVING_DIM:
            raise BadServingVector(
                f"the vector has {len(vector)} values; the model's dimension is {SERVING_DIM}"
            )
        if not all(math.isfinite(x) for x in vector):
            raise BadServingVector("the vector has non-finite values")
        return _ranked(f"vector/{[round(x, 3) for x in vector]}", k)

    async def refresh(self) -> bool:
        self.refreshes += 1
        if self.active is None or self.active == self._version:
            return False
        self._version = self.active
        return True

    async def close(self) -> None:
        self.closed = True


def _conforms(
    *,
    reader: FakeReader,
    table: FakeLeaseTable,
    sink: RecordingSink,
    dead: RecordingDeadLetters,
    suppression: FakeSuppression,
    recommender: FakeRecommender,
    latest: MemoryLatestStore,
    serving: FakeServingRecommender,
) -> tuple[
    RecordReader,
    LeaseTable,
    RecordSink,
    DeadLetterSink,
    Suppression,
    Recommender,
    LatestStore,
    ServingRecommender,
]:
    """Never called: mypy checks here that every double is its port."""
    return reader, table, sink, dead, suppression, recommender, latest, serving


# --------------------------------------------------------------------------- hostile records
def _event(**changes: Any) -> bytes:
    event: dict[str, Any] = {
        "session_id": "s-poison",
        "customer_number": 4711,
        "city": "Nantes",
        "country": "France",
        "credit_limit": 21000.0,
        "browse_history": [{"product_code": "S10_1678", "quantity": 2, "in_shopping_cart": True}],
    }
    event.update(changes)
    return json.dumps(event).encode()


def _raw(field: str, text: str) -> bytes:
    """An event with ``field`` spelt as raw JSON text (what ``json.dumps`` would not write)."""
    return _event(**{field: "@@"}).replace(b'"@@"', text.encode())


POISON: dict[str, tuple[bytes, str]] = {
    # name: (record bytes, the reason it is dead-lettered with)
    "deep_nesting": (b'{"customer_number": 4711, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not_json"),
    "nul_in_product_code": (
        _event(browse_history=[{"product_code": "S10\u0000_1678"}]),
        "bad_browse_history",
    ),
    "surrogate_in_product_code": (
        _event(browse_history=[{"product_code": "@@"}]).replace(b'"@@"', b'"S10\\ud800"'),
        "bad_browse_history",
    ),
    "surrogate_in_city": (_raw("city", '"Nan\\udc00tes"'), "bad_field_value"),
    "surrogate_in_extra_field": (_raw("note", '"\\ud83d"'), "unencodable"),
    "integer_beyond_64_bits": (_event(note=2**70), "unencodable"),
    "huge_integer_credit_limit": (_raw("credit_limit", "9" * 400), "bad_field_value"),
    "huge_float_credit_limit": (_raw("credit_limit", "1e308"), "bad_field_value"),
    "digits_beyond_int_limit": (_raw("credit_limit", "1" * 5000), "not_json"),
    "event_time_before_year_1": (_event(event_time="0001-01-01T00:00:00+14:00"), "bad_event_time"),
    "superscript_customer_number": (_event(customer_number="\u00b2"), "bad_customer_number"),
    "customer_number_beyond_int32": (_event(customer_number=2**31), "bad_customer_number"),
    "huge_quantity": (
        _event(browse_history=[{"product_code": "S10_1678", "quantity": 10**30}]),
        "bad_browse_history",
    ),
    "not_utf8": (b'{"customer_number": 4711, "city": "\xff"}', "not_json"),
    "kpl_garbage": (b"\xf3\x89\x9a\xc2" + b"\x1a\x03\x08\x07\x1a" * 3, "bad_aggregate"),
}
"""One record of every kind known to have stalled a shard (or that is close kin), with its reason."""
