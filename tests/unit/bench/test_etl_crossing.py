"""The ETL benchmark's arithmetic: where two ``t = start-up + rows / rate`` lines cross."""

from __future__ import annotations

import pytest

from bench.etl import _crossing


def test_lines_cross_where_the_faster_rate_pays_for_its_start_up() -> None:
    # python: 1 s + rows / 100k; spark: 10 s + rows / 400k -> equal at 1.2M rows
    python = ((1e5, 2.0), (1e7, 101.0))
    spark = ((1e5, 10.25), (1e7, 35.0))
    assert _crossing(*python, *spark) == pytest.approx(1.2e6)


def test_no_crossing_when_one_line_is_below_everywhere() -> None:
    assert _crossing((1e5, 2.0), (1e7, 101.0), (1e5, 12.0), (1e7, 211.0)) is None
    assert _crossing((1e5, 2.0), (1e7, 101.0), (1e5, 3.0), (1e7, 102.0)) is None
