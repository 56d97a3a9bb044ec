"""The lease table on the embedded PostgreSQL: every write is conditional on the lease counter."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from consumer.leases import PgLeaseTable
from core.checkpointing import Position
from core.errors import LeaseLost


async def test_two_workers_racing_for_one_lease_exactly_one_wins(pool: asyncpg.Pool[Any]) -> None:
    stream = f"race-{uuid.uuid4().hex[:8]}"
    a, b = PgLeaseTable(pool, stream, "a"), PgLeaseTable(pool, stream, "b")
    assert await a.add_shards([("s0", ()), ("s1", ("s0",))]) == 2
    assert await b.add_shards([("s0", ()), ("s1", ("s0",))]) == 0  # idempotent
    rows = {r.shard_id: r for r in await a.list()}
    assert rows["s0"].checkpoint_seq is None and rows["s1"].checkpoint_seq == "TRIM_HORIZON"
    assert rows["s1"].parents == ("s0",)
    observed = rows["s0"].view()
    for _ in range(20):
        got = await asyncio.gather(a.take(observed), b.take(observed))
        assert sum(x is not None for x in got) == 1
        winner = next(x for x in got if x is not None)
        observed = next(r for r in await a.list() if r.shard_id == "s0").view()
        assert observed.counter == winner.counter


async def test_a_stolen_lease_cannot_be_renewed_checkpointed_or_released(pool: asyncpg.Pool[Any]) -> None:
    stream = f"steal-{uuid.uuid4().hex[:8]}"
    a, b = PgLeaseTable(pool, stream, "a"), PgLeaseTable(pool, stream, "b")
    await a.add_shards([("s0", ())])
    (row,) = await a.list()
    held = await a.take(row.view())
    assert held is not None
    await a.renew(held)
    await a.checkpoint(held, Position("17", 2))
    (row,) = await b.list()
    stolen = await b.take(row.view())
    assert stolen is not None and stolen.checkpoint == Position("17", 2)
    with pytest.raises(LeaseLost):
        await a.checkpoint(held, Position("18", 0))
    with pytest.raises(LeaseLost):
        await a.renew(held)
    assert not await a.release(held)
    (row,) = await b.list()
    assert (row.owner, row.checkpoint_seq, row.checkpoint_sub, row.owner_switches) == ("b", "17", 2, 2)
    assert await b.release(stolen)
    (row,) = await b.list()
    assert row.owner is None


async def test_an_ended_shard_is_never_taken_again(pool: asyncpg.Pool[Any]) -> None:
    stream = f"ended-{uuid.uuid4().hex[:8]}"
    a = PgLeaseTable(pool, stream, "a")
    await a.add_shards([("s0", ())])
    (row,) = await a.list()
    held = await a.take(row.view())
    assert held is not None
    await a.checkpoint(held, None, shard_end=True)
    await a.release(held)
    (row,) = await a.list()
    assert row.ended and row.checkpoint_seq == "SHARD_END"
    assert await a.take(row.view()) is None


class _Counting(PgLeaseTable):
    """The real table, counting the statements it sends."""

    statements = 0

    async def _execute(self, what: str, query: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await super()._execute(what, query, *args)


@pytest.mark.parametrize("shards", [1, 8, 64])
async def test_a_renewal_round_is_one_statement_over_the_workers_own_rows(
    pool: asyncpg.Pool[Any], shards: int
) -> None:
    stream = f"renew-{uuid.uuid4().hex[:8]}"
    a, b = _Counting(pool, stream, "a"), PgLeaseTable(pool, stream, "b")
    await a.add_shards([(f"s{i:02d}", ()) for i in range(shards + 1)])
    rows = await a.list()
    held = [x for x in [await a.take(r.view()) for r in rows[:shards]] if x is not None]
    theirs = await b.take(rows[shards].view())  # another worker's row: never read or written by a's renewal
    assert theirs is not None and len(held) == shards
    a.statements = 0
    found = await a.renew_all(held, {x.shard_id: 2.5 for x in held}, 0.4)
    assert a.statements == 1 and found.lost == () and found.adopted == () and found.requested == ()
    # a request, then the handover: the requester finds the lease among its own rows in its renewal
    first = next(r for r in await b.list() if r.shard_id == "s00")
    assert first.owner == "a" and await b.request_handoff(first.view())
    found = await a.renew_all(held, {}, None)
    assert [(x.shard_id, to) for x, to in found.requested] == [("s00", "b")]
    held[0].unrecorded = Position("42", 1)
    assert await a.hand_over(held[0]) is not None
    gained = await b.renew_all([theirs], {}, None)
    assert [(x.shard_id, x.checkpoint) for x in gained.adopted] == [("s00", Position("42", 1))]
    written = {r.shard_id: r.load_rps for r in await a.list()}
    assert written["s00"] == 2.5  # the figure its previous owner wrote, until the new owner's window


async def test_releases_requests_and_handovers_are_notified_at_once(
    pool: asyncpg.Pool[Any], database_url: str, h: Any
) -> None:
    stream = f"notify-{uuid.uuid4().hex[:8]}"
    a = PgLeaseTable(pool, stream, "a", listen_url=database_url)
    b = PgLeaseTable(pool, stream, "b")
    other = PgLeaseTable(pool, f"other-{stream}", "a")  # another stream's notifications are not ours
    heard: list[tuple[str, str]] = []
    try:
        assert await a.listen(lambda kind, worker: heard.append((kind, worker)))
        assert await a.listen(lambda kind, worker: heard.append((kind, worker)))  # idempotent
        await a.add_shards([("s0", ()), ("s1", ())])
        await other.add_shards([("s0", ())])
        rows = await a.list()
        mine = [x for x in [await a.take(r.view()) for r in rows] if x is not None]
        (o,) = await other.list()
        theirs = await other.take(o.view())
        assert theirs is not None and await other.release(theirs)
        first = next(r for r in await b.list() if r.shard_id == "s0")
        assert await b.request_handoff(first.view())
        await h.wait_for(lambda: ("requested", "a") in heard, 10, "the request notified")
        await a.renew_all(mine, {}, None)
        assert await a.hand_over(mine[0]) is not None
        await h.wait_for(lambda: ("handed", "b") in heard, 10, "the handover notified")
        assert await a.release(mine[1])
        await h.wait_for(lambda: ("released", "") in heard, 10, "the release notified")
        assert heard == [("requested", "a"), ("handed", "b"), ("released", "")]
    finally:
        await a.close()
    assert not await PgLeaseTable(pool, stream, "c").listen(lambda kind, worker: None)  # no listen_url
