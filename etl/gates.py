"""Data-quality gates: what a run must satisfy before it is published. Pure (no I/O but the report).

Both engines count the same things and hand them to :func:`evaluate`:

* ``rating_range``: output rows whose ``productRating`` is null or outside ``[rating_min, rating_max]``
  (none allowed);
* ``null_keys``: ratings read with a null ``customerNumber`` or ``productCode`` (none allowed);
* ``orphans``: ratings of a product or customer the shop does not have (the join would drop them
  silently); at most ``max_orphan_fraction`` of the ratings read;
* ``row_count``: the run has at least ``min_row_fraction`` of the previous published run's rows
  (a half-empty source must not replace a good run);
* ``schema``: the columns and types written are the lake contract's (:data:`infra.lake.SCHEMA`).

A failed gate publishes nothing: the run's files are deleted and the report is written beside the
failed run, at ``<dataset>/runs/<run_id>/_quality_report.json`` (counts per check, sample offending
keys); :class:`QualityGateFailed` carries its one-line reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import RecsysError

__all__ = [
    "REPORT_NAME",
    "Check",
    "QualityCounts",
    "QualityGateFailed",
    "QualityReport",
    "Thresholds",
    "evaluate",
    "report_key",
]

REPORT_NAME = "_quality_report.json"


class QualityGateFailed(RecsysError):
    """A run failed a data-quality gate: nothing was published; ``report_uri`` says where to look."""

    def __init__(self, message: str, report: QualityReport, report_uri: str) -> None:
        super().__init__(message)
        self.report = report
        self.report_uri = report_uri


@dataclass(frozen=True, slots=True)
class Thresholds:
    rating_min: float = 1.0
    rating_max: float = 5.0
    max_orphan_fraction: float = 0.0
    min_row_fraction: float = 0.5
    sample_keys: int = 10


@dataclass(slots=True)
class QualityCounts:
    """What an engine counted during a run. Keys are ``[customerNumber, productCode]`` pairs."""

    rows: int = 0  # rows the run would publish
    rows_read: int = 0  # ratings read (after the suppression list), before folding repeats
    bad_ratings: int = 0
    null_keys: int = 0
    orphans: int = 0
    samples: dict[str, list[list[Any]]] = field(default_factory=dict)
    written_schema: list[tuple[str, str]] = field(default_factory=list)  # (column, Arrow type name)

    def sample(self, check: str, key: Sequence[Any], limit: int) -> None:
        kept = self.samples.setdefault(check, [])
        if len(kept) < limit:
            kept.append([_plain(v) for v in key])


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    count: int  # offending rows (or the run's rows for row_count)
    limit: str  # what was allowed, in words
    detail: str = ""
    sample_keys: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QualityReport:
    run_id: str
    engine: str
    checks: list[Check]
    counts: dict[str, int]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def reason(self) -> str:
        """One line: every failed check with its count and limit."""
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failed) or "all checks passed"

    def summary(self) -> dict[str, Any]:
        """For the manifest of a published run: each check's count."""
        return {"passed": self.passed, **{c.name: c.count for c in self.checks}}

    def to_json(self) -> bytes:
        payload = {"passed": self.passed, "reason": self.reason(), **asdict(self)}
        return json.dumps(payload, indent=2, sort_keys=True, default=str).encode()


def report_key(run_id: str, dataset: str) -> str:
    return f"{dataset}/runs/{run_id}/{REPORT_NAME}"


def evaluate(
    counts: QualityCounts,
    thresholds: Thresholds,
    *,
    run_id: str,
    engine: str,
    previous_rows: int | None,
    expected_schema: Iterable[tuple[str, str]],
) -> QualityReport:
    """The report of ``counts`` against ``thresholds``; ``previous_rows`` is the last published run's
    row count (``None``: no previous run, the row-count check passes)."""
    t = thresholds
    checks: list[Check] = []
    checks.append(
        Check(
            "rating_range",
            counts.bad_ratings == 0,
            counts.bad_ratings,
            f"0 ratings outside [{t.rating_min:g}, {t.rating_max:g}]",
            f"{counts.bad_ratings} rating(s) null or outside [{t.rating_min:g}, {t.rating_max:g}]",
            counts.samples.get("rating_range", []),
        )
    )
    checks.append(
        Check(
            "null_keys",
            counts.null_keys == 0,
            counts.null_keys,
            "0 ratings with a null customerNumber or productCode",
            f"{counts.null_keys} rating(s) with a null customerNumber or productCode",
            counts.samples.get("null_keys", []),
        )
    )
    allowed = int(t.max_orphan_fraction * counts.rows_read)
    checks.append(
        Check(
            "orphans",
            counts.orphans <= allowed,
            counts.orphans,
            f"at most {allowed} ({t.max_orphan_fraction:g} of {counts.rows_read} ratings read)",
            f"{counts.orphans} rating(s) of an unknown product or customer (allowed: {allowed})",
            counts.samples.get("orphans", []),
        )
    )
    if previous_rows is None:
        checks.append(Check("row_count", True, counts.rows, "no previous run", "no previous run"))
    else:
        floor = t.min_row_fraction * previous_rows
        checks.append(
            Check(
                "row_count",
                counts.rows >= floor,
                counts.rows,
                f"at least {floor:.0f} ({t.min_row_fraction:g} x the previous run's {previous_rows})",
                f"{counts.rows} rows, below {t.min_row_fraction:g} x the previous run's {previous_rows}",
            )
        )
    expected = list(expected_schema)
    got = list(counts.written_schema)
    diff = _schema_diff(expected, got)
    checks.append(
        Check("schema", not diff, len(diff), "the lake contract's columns and types", "; ".join(diff))
    )
    return QualityReport(
        run_id=run_id,
        engine=engine,
        checks=checks,
        counts={
            "rows": counts.rows,
            "rows_read": counts.rows_read,
            "bad_ratings": counts.bad_ratings,
            "null_keys": counts.null_keys,
            "orphans": counts.orphans,
        },
    )


def _schema_diff(expected: Sequence[tuple[str, str]], got: Sequence[tuple[str, str]]) -> list[str]:
    if list(expected) == list(got):
        return []
    want: Mapping[str, str] = dict(expected)
    have: Mapping[str, str] = dict(got)
    diff = [f"missing column {name}" for name in want if name not in have]
    diff += [f"unexpected column {name}" for name in have if name not in want]
    diff += [
        f"{name} is {have[name]}, expected {kind}"
        for name, kind in want.items()
        if name in have and have[name] != kind
    ]
    if not diff:
        diff.append(f"columns out of order: {', '.join(have)}")
    return diff
