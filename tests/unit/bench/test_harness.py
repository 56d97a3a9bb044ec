"""The harness's arithmetic: medians, spreads, per-run ratios, percentiles, the combined summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench._harness import Figure, Report, percentile, summarise


def test_median_and_spread_of_runs() -> None:
    f = Figure("x", "events/s", [100.0, 120.0, 80.0])
    assert f.median == 100.0
    assert f.spread == pytest.approx(0.4)  # (120 - 80) / 100


def test_spread_of_a_zero_median_is_zero() -> None:
    assert Figure("x", "", [0.0, 0.0, 0.0]).spread == 0.0


def test_ratio_is_taken_run_by_run_and_names_its_reference() -> None:
    report = Report("t")
    ours = report.add(Figure("ours", "events/s", [100.0, 300.0, 200.0]))
    lab = report.add(Figure("lab", "events/s", [10.0, 20.0, 40.0]))
    ratio = report.ratio("ours / lab", ours, lab)
    assert ratio.runs == [10.0, 15.0, 5.0]  # not median(ours) / median(lab) = 200 / 20
    assert ratio.median == 10.0
    assert ratio.reference == "lab" and ratio.unit == "x"
    assert report.figures[-1] is ratio


def test_ratio_needs_the_same_number_of_runs() -> None:
    report = Report("t")
    with pytest.raises(ValueError):
        report.ratio("r", Figure("a", "", [1.0, 2.0]), Figure("b", "", [1.0]))


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.0, 1.0), (0.5, 50.0), (0.99, 99.0), (1.0, 100.0)],
)
def test_percentile_by_nearest_rank(q: float, expected: float) -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_summary_keeps_every_benchmark_and_its_figures(tmp_path: Path) -> None:
    report = Report("alpha", scale={"events": 10})
    a = report.add(Figure("a", "events/s", [2.0, 4.0, 6.0]))
    b = report.add(Figure("b", "events/s", [1.0, 1.0, 1.0]))
    report.ratio("a / b", a, b)
    payload = {
        "name": report.name,
        "machine": {"when": "2026-01-01T00:00:00+00:00"},
        "scale": report.scale,
        "figures": [
            {"name": f.name, "unit": f.unit, "runs": f.runs, "reference": f.reference, "note": f.note,
             "median": f.median, "spread": f.spread}
            for f in report.figures
        ],
    }  # fmt: skip
    (tmp_path / "alpha.json").write_text(json.dumps(payload))
    (tmp_path / "summary.json").write_text("{}")  # an earlier summary is not a benchmark

    summary = summarise(results=tmp_path)

    assert list(summary["benchmarks"]) == ["alpha"]
    alpha = summary["benchmarks"]["alpha"]
    assert alpha["scale"] == {"events": 10}
    ratio = next(f for f in alpha["figures"] if f["name"] == "a / b")
    assert ratio["median"] == 4.0 and ratio["n"] == 3 and ratio["reference"] == "b"
    assert summarise(names=["other"], results=tmp_path)["benchmarks"] == {}
