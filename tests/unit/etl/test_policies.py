"""Update policies for repeated ratings, fed in chunks that split a pair's group."""

from __future__ import annotations

import pytest

from etl.policies import RepeatReducer

# (customer, product, rating, time)
ROWS = [
    (103, "S10_1678", 2, 1),
    (103, "S10_1678", 5, 3),
    (103, "S10_1678", 4, 2),
    (103, "S18_2238", 1, 9),
    (112, "S10_1678", 3, None),
    (112, "S10_1678", 4, 5),
]


def _run(policy: str, split: int) -> list[tuple[object, ...]]:
    reducer = RepeatReducer(policy, key=(0, 1), rating=2, time=3)  # type: ignore[arg-type]
    out = reducer.feed(ROWS[:split]) + reducer.feed(ROWS[split:]) + reducer.finish()
    assert reducer.repeats == 3
    return [tuple(row) for row in out]


@pytest.mark.parametrize("split", [0, 1, 2, 4, 5, 6])
def test_replace_keeps_the_last_row_read(split: int) -> None:
    assert _run("replace", split) == [
        (103, "S10_1678", 4, 2),
        (103, "S18_2238", 1, 9),
        (112, "S10_1678", 4, 5),
    ]


@pytest.mark.parametrize("split", [0, 2, 5])
def test_latest_keeps_the_newest_and_ignores_missing_times(split: int) -> None:
    assert _run("latest", split) == [
        (103, "S10_1678", 5, 3),
        (103, "S18_2238", 1, 9),
        (112, "S10_1678", 4, 5),
    ]


@pytest.mark.parametrize("split", [0, 3, 6])
def test_average_is_the_mean_of_the_pair(split: int) -> None:
    out = _run("average", split)
    assert [row[2] for row in out] == [pytest.approx(11 / 3), 1, 3.5]


def test_unknown_policy_and_latest_without_time_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown update policy"):
        RepeatReducer("newest", (0, 1), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time column"):
        RepeatReducer("latest", (0, 1), 2)


def test_nothing_pending_finishes_empty() -> None:
    reducer = RepeatReducer("replace", (0, 1), 2)
    assert reducer.feed([]) == [] and reducer.finish() == []
