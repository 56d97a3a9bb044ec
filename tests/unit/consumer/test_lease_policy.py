"""Lease policy: expiry on the observer's clock, takes, steals, parents before children."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.leases import ExpiryObserver, LeaseView, backoff_delay, eligible, plan_takes


def lease(shard: str, owner: str | None, counter: int = 1, **kw: object) -> LeaseView:
    return LeaseView(shard, owner, counter, **kw)  # type: ignore[arg-type]


def test_a_lease_expires_only_after_its_counter_stood_still_for_the_duration() -> None:
    obs = ExpiryObserver(lease_duration_s=6.0)
    rows = [lease("s0", "a", 1), lease("s1", None, 4)]
    assert obs.observe(rows, now=100.0) == {"s1"}  # unowned: free at once
    assert obs.observe(rows, now=105.9) == {"s1"}
    assert obs.observe([lease("s0", "a", 2), rows[1]], now=106.0) == {"s1"}  # renewed: clock restarts
    assert obs.observe([lease("s0", "a", 2), rows[1]], now=111.9) == {"s1"}
    assert obs.observe([lease("s0", "a", 2), rows[1]], now=112.0) == {"s0", "s1"}


def test_a_new_worker_takes_its_share_of_free_leases() -> None:
    rows = [lease(f"s{i}", None) for i in range(4)]
    plan = plan_takes(rows, "me", held=(), expired={"s0", "s1", "s2", "s3"})
    assert [x.shard_id for x in plan.take] == ["s0", "s1", "s2", "s3"]
    assert plan.target == 4


def test_takes_stop_at_the_fair_share() -> None:
    rows = [lease("s0", "a"), lease("s1", "a"), lease("s2", None), lease("s3", None)]
    plan = plan_takes(rows, "me", held=(), expired={"s2", "s3"})
    assert plan.live_workers == 2 and plan.target == 2
    assert [x.shard_id for x in plan.take] == ["s2", "s3"]


def test_expired_leases_of_a_dead_worker_are_taken() -> None:
    rows = [lease("s0", "me"), lease("s1", "me"), lease("s2", "dead"), lease("s3", "dead")]
    plan = plan_takes(rows, "me", held={"s0", "s1"}, expired={"s2", "s3"})
    assert plan.live_workers == 1
    assert [x.shard_id for x in plan.take] == ["s2", "s3"]


def test_steal_one_from_the_most_loaded_worker_only_when_two_apart() -> None:
    rows = [lease(f"s{i}", "a") for i in range(4)]
    plan = plan_takes(rows, "b", held=(), expired=set())
    assert plan.steal is not None and plan.steal.owner == "a" and not plan.take
    rows3 = [lease("s0", "a"), lease("s1", "a"), lease("s2", "b"), lease("s3", "b")]
    assert plan_takes(rows3, "c", held=(), expired=set()).steal is not None
    balanced = [lease("s0", "a"), lease("s1", "a"), lease("s2", "b"), lease("s3", "c")]
    assert plan_takes(balanced, "c", held={"s3"}, expired=set()).empty


def test_children_wait_for_every_parent_to_end() -> None:
    rows = [
        lease("p1", "a", ended=False),
        lease("p2", None, ended=True),
        lease("c1", None, parents=("p1", "p2")),
        lease("c2", None, parents=("gone",)),
    ]
    by_id = {x.shard_id: x for x in rows}
    assert not eligible(by_id["c1"], by_id)
    assert eligible(by_id["c2"], by_id)  # a parent no longer in the table is done
    plan = plan_takes(rows, "me", held=(), expired={"c1", "c2", "p2"})
    assert "c1" not in {x.shard_id for x in plan.take}
    ended_rows = [lease("p1", None, ended=True), *rows[1:]]
    plan = plan_takes(ended_rows, "me", held=(), expired={"p1", "c1", "c2", "p2"})
    assert {x.shard_id for x in plan.take} == {"c1", "c2"}


@settings(max_examples=200)
@given(st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=5))
def test_rounds_of_planning_converge_to_a_balance(shards: int, workers: int) -> None:
    """Simulate workers planning in turn (each plan applied at once); leases end within one of each other."""
    owners: dict[str, str | None] = {f"s{i}": None for i in range(shards)}
    names = [f"w{i}" for i in range(workers)]
    for _ in range(shards * workers + 5):
        for me in names:
            rows = [lease(s, o) for s, o in owners.items()]
            held = {s for s, o in owners.items() if o == me}
            plan = plan_takes(rows, me, held, expired={s for s, o in owners.items() if o is None})
            for x in plan.take:
                owners[x.shard_id] = me
            if plan.steal is not None:
                owners[plan.steal.shard_id] = me
    counts = [sum(1 for o in owners.values() if o == w) for w in names]
    assert None not in owners.values()
    assert max(counts) - min(counts) <= 1


def test_backoff_is_capped_and_never_zero() -> None:
    assert backoff_delay(0, 0.1, 5.0, 0.0) == 0.05
    assert backoff_delay(0, 0.1, 5.0, 1.0) == 0.1
    assert backoff_delay(10, 0.1, 5.0, 0.999) <= 5.0
    assert backoff_delay(100, 0.1, 5.0, 0.0) == 2.5
