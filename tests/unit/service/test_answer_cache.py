"""The in-memory stored answers (``service.answer_cache``): what is kept, what is dropped, and the
race between a read and the change notifications, driven step by step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.recommendations import ScoredItem
from infra.answer_changes import parse_payload
from infra.latest import StoredAnswers, StreamedAnswer
from service.answer_cache import AnswerCache

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def _stored(value: int, model_items: int = 0) -> StoredAnswers:
    stream = StreamedAnswer("v1", str(value), NOW, '[{"id":"S10_1678","score":0.5}]', "{}", 1, 0)
    model = tuple(ScoredItem(f"P{i}", 1.0 - i / 100) for i in range(model_items)) if model_items else None
    return StoredAnswers(stream, model)


def _value(found: StoredAnswers) -> int:
    assert found.stream is not None
    return int(found.stream.event_id)


@dataclass
class Table:
    """The database: each customer's current value; every read is counted."""

    values: dict[int, int] = field(default_factory=dict)
    reads: list[tuple[int, str | None, int]] = field(default_factory=list)
    model_items: int = 0

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        self.reads.append((customer_number, model_version, limit))
        return _stored(self.values.get(customer_number, 0), min(limit, self.model_items))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cache(table: Table, clock: Clock | None = None, **kw: int) -> AnswerCache:
    cache = AnswerCache(
        table,
        max_bytes=kw.pop("max_bytes", 1 << 20),
        ttl_s=30.0,
        depth=100,
        clock=clock or Clock(),
        **kw,
    )
    cache.set_live(True)
    return cache


async def test_a_repeated_lookup_is_answered_from_memory_until_the_customer_changes() -> None:
    table = Table({103: 1})
    cache = _cache(table)
    assert _value(await cache.lookup(103, "v1", 10)) == 1
    assert _value(await cache.lookup(103, "v1", 10)) == 1
    assert len(table.reads) == 1 and table.reads[0] == (103, "v1", 100)  # read at the kept depth
    table.values[103] = 2
    cache.changed(frozenset({104}))  # another customer: 103's entry stays
    assert _value(await cache.lookup(103, "v1", 10)) == 1
    cache.changed(frozenset({103, 105}))
    assert _value(await cache.lookup(103, "v1", 10)) == 2
    assert len(table.reads) == 2


async def test_a_change_of_everyone_drops_everything() -> None:
    table = Table({103: 1, 104: 1})
    cache = _cache(table)
    await cache.lookup(103, "v1", 10)
    await cache.lookup(104, "v1", 10)
    table.values.update({103: 2, 104: 2})
    cache.changed(None)
    assert len(cache) == 0 and cache.bytes == 0
    assert _value(await cache.lookup(103, "v1", 10)) == 2
    assert _value(await cache.lookup(104, "v1", 10)) == 2


async def test_without_the_listener_every_lookup_reads_the_database() -> None:
    table = Table({103: 1})
    cache = _cache(table)
    await cache.lookup(103, "v1", 10)
    cache.set_live(False)  # the listener's connection was lost: a change may be missed
    table.values[103] = 2
    assert _value(await cache.lookup(103, "v1", 10)) == 2
    assert _value(await cache.lookup(103, "v1", 10)) == 2
    assert len(table.reads) == 3 and len(cache) == 0
    cache.set_live(True)
    await cache.lookup(103, "v1", 10)
    await cache.lookup(103, "v1", 10)
    assert len(table.reads) == 4


async def test_another_version_is_a_miss_and_entries_expire() -> None:
    clock = Clock()
    table = Table({103: 1})
    cache = _cache(table, clock)
    await cache.lookup(103, "v1", 10)
    await cache.lookup(103, "v2", 10)  # the API switched versions: read again, for v2
    assert [r[1] for r in table.reads] == ["v1", "v2"]
    await cache.lookup(103, "v2", 10)
    assert len(table.reads) == 2
    clock.now += 30.0  # the time to live passed
    await cache.lookup(103, "v2", 10)
    assert len(table.reads) == 3


async def test_the_precomputed_answer_is_cut_to_the_limit_and_deeper_limits_read_the_database() -> None:
    table = Table({103: 1}, model_items=100)
    cache = _cache(table)
    first = await cache.lookup(103, "v1", 7)
    again = await cache.lookup(103, "v1", 12)
    assert first.model is not None and len(first.model) == 7
    assert again.model is not None and len(again.model) == 12 and again.model[:7] == first.model
    assert len(table.reads) == 1
    await cache.lookup(103, "v1", 101)  # past the kept depth
    await cache.lookup(103, "v1", 101)
    assert [r[2] for r in table.reads] == [100, 101, 101]


async def test_memory_is_bounded_least_recently_used_out() -> None:
    table = Table()
    one = _cache(Table())
    await one.lookup(1, "v1", 10)
    size = one.bytes
    cache = _cache(table, max_bytes=size * 3)
    for customer in (1, 2, 3):
        await cache.lookup(customer, "v1", 10)
    await cache.lookup(1, "v1", 10)  # 1 is now the most recently used
    await cache.lookup(4, "v1", 10)  # 2 goes
    assert len(cache) == 3 and cache.bytes <= size * 3
    reads = len(table.reads)
    await cache.lookup(1, "v1", 10)
    await cache.lookup(3, "v1", 10)
    await cache.lookup(4, "v1", 10)
    assert len(table.reads) == reads
    await cache.lookup(2, "v1", 10)
    assert len(table.reads) == reads + 1
    tiny = _cache(Table(), max_bytes=size - 1)  # an entry larger than the whole budget: not kept
    await tiny.lookup(1, "v1", 10)
    assert len(tiny) == 0


class Gated:
    """A database whose reads wait until the test lets them finish, with the value they saw when
    the test says the statement ran."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.pending: list[tuple[int, asyncio.Future[StoredAnswers]]] = []

    async def lookup(self, customer_number: int, model_version: str | None, limit: int) -> StoredAnswers:
        done: asyncio.Future[StoredAnswers] = asyncio.get_running_loop().create_future()
        self.pending.append((customer_number, done))
        return await done


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_read_that_raced_a_change_is_not_kept() -> None:
    db = Gated()
    cache = AnswerCache(db, max_bytes=1 << 20, ttl_s=30.0, depth=100)
    cache.set_live(True)
    task = asyncio.create_task(cache.lookup(103, "v1", 10))
    await _settle()
    ((_customer, done),) = db.pending
    snapshot = _stored(1)  # the statement ran before the change committed...
    cache.changed(frozenset({103}))  # ...whose notification arrived before the read returned
    done.set_result(snapshot)
    assert _value(await task) == 1  # this request gets what it read
    db.pending.clear()
    follow = asyncio.create_task(cache.lookup(103, "v1", 10))
    await _settle()
    assert len(db.pending) == 1, "the raced read was kept"
    db.pending[0][1].set_result(_stored(2))
    assert _value(await follow) == 2


async def test_forgotten_changes_make_older_reads_unkeepable() -> None:
    db = Gated()
    cache = AnswerCache(db, max_bytes=1 << 20, ttl_s=30.0, depth=100, touched_max=2)
    cache.set_live(True)
    task = asyncio.create_task(cache.lookup(103, "v1", 10))
    await _settle()
    for customer in (103, 1, 2, 3):  # 103's change is forgotten past two
        cache.changed(frozenset({customer}))
    db.pending[0][1].set_result(_stored(1))
    await task
    assert len(cache) == 0


def test_payloads() -> None:
    assert parse_payload("*") is None
    assert parse_payload("103") == frozenset({103})
    assert parse_payload("103,-4,2147483647") == frozenset({103, -4, 2147483647})
    assert parse_payload("103,x") is None  # not understood: everyone
    assert parse_payload("") is None


# ------------------------------------------------------------------ the race, as a property
Op = tuple[str, int]
# the live toggle is rare (it drops everything, which hides the races the rest can make)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "deliver", "lookup", "run", "finish"] * 4 + ["live"]),
        st.integers(0, 5),
    ),
    min_size=15,
    max_size=40,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
@example([("lookup", 0), ("run", 0), ("write", 0), ("deliver", 0), ("finish", 0), ("lookup", 0)])
def test_no_answer_is_older_than_the_last_change_announced(ops: list[Op]) -> None:
    """Any interleaving of writes, their notifications (delivered in commit order, after the
    commit), lookups, and reads whose statement runs and returns at any later point: an answer
    never predates a change whose notification the cache had received before the request came,
    and every request gets at least what was committed when it came."""

    async def scenario() -> None:
        db = Gated()
        cache = AnswerCache(db, max_bytes=1 << 20, ttl_s=1e9, depth=100)
        cache.set_live(True)
        committed: dict[int, int] = {}
        announced: list[tuple[int, int]] = []  # (customer, value) not yet delivered
        told: dict[int, int] = {}  # what the cache was told, per customer
        reads: list[tuple[int, asyncio.Future[StoredAnswers], list[int]]] = []  # customer, gate, seen
        requests: list[tuple[asyncio.Task[StoredAnswers], int, int]] = []  # task, floor, customer

        async def settle() -> None:
            for _ in range(4):
                await asyncio.sleep(0)

        for op, arg in ops:
            customer = arg % 2
            if op == "write":
                committed[customer] = committed.get(customer, 0) + 1
                announced.append((customer, committed[customer]))
            elif op == "deliver" and announced:
                changed, value = announced.pop(0)
                told[changed] = value
                cache.changed(frozenset({changed}))
            elif op == "lookup":
                floor = told.get(customer, 0)
                task = asyncio.create_task(cache.lookup(customer, "v1", 10))
                before = len(db.pending)
                await settle()
                for read, gate in db.pending[before:]:
                    reads.append((read, gate, []))
                    # its statement runs after the request came: it sees at least what was committed
                    floor = max(floor, committed.get(customer, 0))
                requests.append((task, floor, customer))
            elif op == "run" and reads:
                read, _gate, seen = reads[arg % len(reads)]
                if not seen:
                    seen.append(committed.get(read, 0))
            elif op == "finish" and reads:
                read, gate, seen = reads.pop(arg % len(reads))
                gate.set_result(_stored(seen[0] if seen else committed.get(read, 0)))
                await settle()
            elif op == "live":
                cache.set_live(arg % 2 == 1)
            for request in list(requests):
                if request[0].done():
                    requests.remove(request)
                    assert _value(request[0].result()) >= request[1], (request[2], request[1], ops)
        for read, gate, seen in reads:
            gate.set_result(_stored(seen[0] if seen else committed.get(read, 0)))
        await settle()
        for task, floor, asked in requests:
            assert _value(await task) >= floor, (asked, floor, ops)

    asyncio.run(scenario())


@pytest.mark.parametrize("limit", [1, 10, 100])
async def test_a_limit_within_the_depth_is_served_from_memory(limit: int) -> None:
    table = Table({103: 1}, model_items=100)
    cache = _cache(table)
    await cache.lookup(103, "v1", 100)
    found = await cache.lookup(103, "v1", limit)
    assert found.model is not None and len(found.model) == limit and len(table.reads) == 1
