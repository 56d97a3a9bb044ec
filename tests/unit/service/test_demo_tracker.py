"""The demo's put-to-API-visible bookkeeping (pure)."""

from __future__ import annotations

import pytest

from recsys.visibility import Sent, Tracker, percentile


def test_an_event_is_visible_when_it_or_a_newer_event_of_its_customer_is_served() -> None:
    tracker = Tracker()
    tracker.add([Sent("s:1", 7, 10.0), Sent("s:2", 8, 10.0), Sent("s:3", 7, 11.0)])
    tracker.seen(7, "s:9", 12.0)  # not one of ours: nothing changes
    tracker.seen(7, None, 12.0)
    assert tracker.latency_s == {}
    tracker.seen(7, "s:3", 12.5)  # the newer event of customer 7 supersedes s:1
    assert tracker.latency_s == {"s:1": 2.5, "s:3": 1.5}
    assert list(tracker.pending) == [8]
    tracker.seen(8, "s:2", 10.25)
    assert tracker.latency_s["s:2"] == pytest.approx(0.25)
    assert tracker.pending == {}


def test_only_the_events_up_to_the_one_served_are_visible() -> None:
    tracker = Tracker()
    tracker.add([Sent("a", 1, 0.0), Sent("b", 1, 1.0), Sent("c", 1, 2.0)])
    tracker.seen(1, "b", 3.0)
    assert set(tracker.latency_s) == {"a", "b"}
    assert [s.event_id for s in tracker.pending[1]] == ["c"]


def test_percentile_is_nearest_rank_on_sorted_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # index round(49.5) = 50
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
