"""Lease policy: expiry on the observer's clock, takes, handoff requests, parents before children."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.balance import CpuMeter, LoadMeter
from consumer.leases import HeldLease
from core.leases import ExpiryObserver, LeaseView, LoadPolicy, backoff_delay, eligible, plan_takes


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


def test_request_one_from_the_most_loaded_worker_only_when_two_apart() -> None:
    rows = [lease(f"s{i}", "a") for i in range(4)]
    plan = plan_takes(rows, "b", held=(), expired=set())
    assert [x.owner for x in plan.requests] == ["a", "a"] and not plan.take  # up to its fair share
    rows3 = [lease("s0", "a"), lease("s1", "a"), lease("s2", "b"), lease("s3", "b")]
    assert len(plan_takes(rows3, "c", held=(), expired=set()).requests) == 1
    balanced = [lease("s0", "a"), lease("s1", "a"), lease("s2", "b"), lease("s3", "c")]
    assert plan_takes(balanced, "c", held={"s3"}, expired=set()).empty


def test_one_request_at_a_time_and_a_requested_lease_counts_for_the_requester() -> None:
    rows = [lease("s0", "a", handoff_to="b"), *(lease(f"s{i}", "a") for i in range(1, 6))]
    assert plan_takes(rows, "b", held=(), expired=set()).empty  # its request is still pending
    # c sees a with 5 (one of them on its way to b) and b with 1: it asks a, never for s0
    plan = plan_takes(rows, "c", held=(), expired=set())
    assert plan.requests and "s0" not in {x.shard_id for x in plan.requests} and plan.live_workers == 3


def test_an_expired_lease_is_taken_not_requested() -> None:
    rows = [lease("s0", "dead"), lease("s1", "dead")]
    plan = plan_takes(rows, "me", held=(), expired={"s0", "s1"})
    assert not plan.requests and [x.shard_id for x in plan.take] == ["s0", "s1"]


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
            for x in plan.requests:  # the owner hands it over (at once, in this simulation)
                owners[x.shard_id] = me
    counts = [sum(1 for o in owners.values() if o == w) for w in names]
    assert None not in owners.values()
    assert max(counts) - min(counts) <= 1


def test_backoff_is_capped_and_never_zero() -> None:
    assert backoff_delay(0, 0.1, 5.0, 0.0) == 0.05
    assert backoff_delay(0, 0.1, 5.0, 1.0) == 0.1
    assert backoff_delay(10, 0.1, 5.0, 0.999) <= 5.0
    assert backoff_delay(100, 0.1, 5.0, 0.0) == 2.5


def _simulate(loads: dict[str, float], names: list[str], rounds: int) -> tuple[dict[str, str | None], int]:
    """Workers planning in turn (requests handed over at once); the owners and how many moves the last
    half of the rounds made (0 once balanced: no flapping)."""
    owners: dict[str, str | None] = dict.fromkeys(loads)
    moves_late = 0
    for r in range(rounds):
        for me in names:
            rows = [lease(s, o, load=loads[s]) for s, o in owners.items()]
            held = {s for s, o in owners.items() if o == me}
            plan = plan_takes(rows, me, held, expired={s for s, o in owners.items() if o is None})
            for x in plan.take:
                owners[x.shard_id] = me
            for x in plan.requests:
                owners[x.shard_id] = me
                moves_late += r >= rounds // 2
    return owners, moves_late


def test_balancing_by_load_gives_the_hot_shard_a_worker_of_its_own_and_then_stays_put() -> None:
    loads = {"s0": 100.0, **{f"s{i}": 10.0 for i in range(1, 8)}}  # one shard 10x the others
    owners, late = _simulate(loads, ["w0", "w1"], 40)
    per = {w: sum(loads[s] for s, o in owners.items() if o == w) for w in ("w0", "w1")}
    assert sorted(per.values()) == [70.0, 100.0]  # the best split there is
    assert late == 0
    owners, late = _simulate(loads, ["w0", "w1", "w2", "w3"], 40)
    per = {w: sum(loads[s] for s, o in owners.items() if o == w) for w in ("w0", "w1", "w2", "w3")}
    assert max(per.values()) == 100.0 and sorted(per.values())[:3] == [20.0, 20.0, 30.0]
    assert late == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=16),
    st.integers(min_value=1, max_value=5),
)
def test_balancing_by_load_settles_within_the_band(shard_loads: list[float], workers: int) -> None:
    """Whatever the loads: the moves stop, and no single move left would narrow a gap by the band."""
    loads = {f"s{i}": x for i, x in enumerate(shard_loads)}
    names = [f"w{i}" for i in range(workers)]
    owners, late = _simulate(loads, names, 4 * len(loads) + 8)
    assert late == 0 and None not in owners.values()
    total = sum(loads.values())
    if total < LoadPolicy().min_rps:
        return
    per = {w: sum(loads[s] for s, o in owners.items() if o == w) for w in names}
    margin = LoadPolicy().band * total / workers
    for a in names:
        for b in names:
            gap = per[a] - per[b]
            assert not any(margin / 2 <= loads[s] <= gap - margin / 2 for s, o in owners.items() if o == a), (
                a,
                b,
                per,
            )


def test_a_worker_with_spare_cpu_asks_for_the_hottest_lease_and_a_busy_one_asks_for_none() -> None:
    rows = [lease("s0", "a", load=5.0), lease("s1", "a", load=50.0), lease("s2", "a", load=20.0)]
    plan = plan_takes(rows, "b", held=(), expired=set(), my_cpu=0.3)
    assert plan.requests[0].shard_id == "s1"  # the hottest first
    assert plan_takes(rows, "b", held=(), expired=set(), my_cpu=0.95).empty
    assert plan_takes(rows, "b", held=(), expired=set(), my_cpu=None).requests  # not warmed up


def test_cpu_is_not_reported_until_warmed_up() -> None:
    clock, cpu = [0.0], [0.0]
    meter = CpuMeter(warmup_s=10.0, clock=lambda: clock[0], cpu_clock=lambda: cpu[0])
    readings = []
    for _ in range(8):  # the start-up transient: a full core for the first seconds
        clock[0] += 2.0
        cpu[0] += 2.0 if clock[0] <= 10 else 0.5
        readings.append(meter.reading())
    assert readings[:5] == [None] * 5  # nothing about the start-up reaches the planners
    assert readings[-1] == 0.25


def test_shard_rates_are_measured_over_a_full_window_of_the_current_owner() -> None:
    clock = [0.0]
    meter = LoadMeter(window_s=4.0, clock=lambda: clock[0])
    a = HeldLease("s0", 1, None, 0)
    for t, n in ((0.0, 0), (2.0, 500)):  # a catch-up burst right after the lease was gained
        clock[0], a.records_in = t, n
        assert meter.rates([a]) == {}  # not a full window yet: the previous figure stays
    clock[0], a.records_in = 4.0, 520
    assert meter.rates([a]) == {"s0": 130.0}
    clock[0], a.records_in = 6.0, 540
    assert meter.rates([a]) == {"s0": 10.0}  # the window slid past the burst
    regained = HeldLease("s0", 5, None, 0)
    assert meter.rates([regained]) == {}  # a new lease object: a new window


def test_a_worker_that_just_gained_or_lost_a_lease_is_left_alone_until_its_figures_settle() -> None:
    obs = ExpiryObserver(lease_duration_s=6.0)
    rows = [lease("s0", "a", load=50.0), lease("s1", "a", load=50.0), lease("s2", "b", load=1.0)]
    obs.observe(rows, now=0.0)
    assert obs.moved_within(10.0, now=0.0) == set()  # owners seen from the start: settled
    moved = [rows[0], rows[1], lease("s2", "c", load=1.0)]
    obs.observe(moved, now=1.0)
    assert obs.moved_within(10.0, now=1.0) == {"s2"}
    assert plan_takes(moved, "c", held={"s2"}, expired=set(), settling={"s2"}).empty
    assert plan_takes(moved, "c", held={"s2"}, expired=set()).requests
