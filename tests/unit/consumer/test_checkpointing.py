"""The checkpoint policy: never past an unacknowledged record, sub-sequence aware."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.checkpointing import CheckpointTracker, Position, is_after


def test_positions_compare_as_numbers_then_sub_sequence() -> None:
    assert Position("9") < Position("10")
    assert Position("10", 0) < Position("10", 1) < Position("11", 0)
    assert Position("49590338271490256608559692538361571095921575989136588898", 3) < Position(
        "49590338271490256608559692538361571095921575989136588899", 0
    )


def test_is_after_resumes_after_the_checkpoint() -> None:
    assert is_after(Position("5", 1), None)
    assert not is_after(Position("5", 1), Position("5", 1))
    assert is_after(Position("5", 2), Position("5", 1))
    assert not is_after(Position("4", 9), Position("5", 0))


def test_safe_position_waits_for_the_oldest_pending_record() -> None:
    tracker = CheckpointTracker()
    for pos in (Position("1"), Position("2", 0), Position("2", 1), Position("3")):
        tracker.register(pos)
    tracker.ack(Position("2", 1))
    tracker.ack(Position("3"))
    assert tracker.safe_position() is None
    tracker.ack(Position("1"))
    assert tracker.safe_position() == Position("1")
    tracker.ack(Position("2", 0))
    assert tracker.safe_position() == Position("3")
    assert tracker.pending == 0


def test_to_checkpoint_only_when_it_moved() -> None:
    tracker = CheckpointTracker(Position("10"))
    assert tracker.to_checkpoint() is None
    tracker.register(Position("11"))
    assert tracker.to_checkpoint() is None
    tracker.ack(Position("11"))
    assert tracker.to_checkpoint() == Position("11")
    tracker.checkpointed(Position("11"))
    assert tracker.to_checkpoint() is None


def test_register_out_of_order_and_unknown_ack_are_errors() -> None:
    tracker = CheckpointTracker(Position("5"))
    with pytest.raises(ValueError, match="not after"):
        tracker.register(Position("5"))
    tracker.register(Position("6"))
    with pytest.raises(KeyError):
        tracker.ack(Position("7"))


@given(st.data(), st.integers(min_value=1, max_value=60))
def test_safe_position_is_the_longest_acked_prefix(data: st.DataObject, n: int) -> None:
    positions = [Position(str(100 + i // 3), i % 3) for i in range(n)]
    tracker = CheckpointTracker()
    for pos in positions:
        tracker.register(pos)
    order = data.draw(st.permutations(range(n)))
    stop = data.draw(st.integers(min_value=0, max_value=n))
    acked = set(order[:stop])
    for i in order[:stop]:
        tracker.ack(positions[i])
    prefix = 0
    while prefix < n and prefix in acked:
        prefix += 1
    expected = positions[prefix - 1] if prefix else None
    assert tracker.safe_position() == expected
    assert tracker.pending == n - prefix
