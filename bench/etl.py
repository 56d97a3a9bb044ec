"""ETL throughput and peak memory at 1x, 10x, 100x data, both engines side by side: memory must not
grow with the rows, and where does the Spark engine (a local master on this machine) overtake the
Python one?

Each scale is seeded into its own MariaDB database (``RECSYS_BENCH_MYSQL_URL``, default the
machine's root@127.0.0.1:3306), then ``recsys etl`` runs as a child process writing to a local lake.
Its peak RSS is the ``VmHWM`` the child reads from ``/proc/self/status`` as it exits: per address
space, so it is the ETL's own. (``ru_maxrss`` from ``wait4`` is not: Linux carries the parent's
high-water mark into the child across fork+exec, and the parent here has just generated the data.) The
headline is the ratio of peak RSS at the largest scale to 1x, next to the ratio of rows.
Databases are dropped at the end unless ``RECSYS_BENCH_KEEP_DB=1`` (reseeding 100x takes a while).

Both engines run as ``recsys etl --engine python|spark`` child processes, interleaved. Peak memory is
the sum of the ``VmHWM`` of every process of the command (the Spark engine's JVM is a child of its
Python driver), sampled while it runs; rows/s is given twice: inside the run (as the command
prints it) and over the whole command (start-up included: the interpreter, and Spark's JVM). From
the whole-command times at the two largest scales, ``t = start-up + rows / rate`` per engine gives where the
lines cross. The Glue estimate scales the Spark engine's measured rate per core to a worker count
(G.1X: 4 vCPUs, 1 DPU; one worker is the driver): an estimate, printed as such, not a measurement.

The suppression list's price: at 10x, the same ETL also runs with ``--database-url`` pointing at a
fresh database of the bench stack whose ``suppressed_customers`` holds 1 % of the customers (read at
the start and again before publishing; their rows dropped), interleaved with runs without one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import sqlalchemy as sa

from bench._harness import Figure, Report, bench_stack, drop_database, peak_rss_mb, run_async

MYSQL_URL = os.environ.get("RECSYS_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _admin(sql: str) -> None:
    import pymysql

    u = sa.make_url(MYSQL_URL)
    conn = pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        autocommit=True,
        connect_timeout=5,
    )
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _database(scale: int) -> str:
    from etl.seed import seed

    name = f"recsys_bench_etl_s{scale}"
    _admin(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    url = sa.make_url(MYSQL_URL).set(database=name).render_as_string(hide_password=False)
    started = time.perf_counter()
    summary = seed(url, scale=scale, seed=42)
    print(
        f"  seeded {scale}x: {summary.customers_total} customers, {summary.products_total} products, "
        f"{summary.ratings_written or 'existing'} ratings in {time.perf_counter() - started:.1f}s"
    )
    return url


# Runs `recsys etl` and prints this process's VmHWM (KiB) to stderr on the way out.
_CHILD = """
import atexit, sys

def _peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write(f"BENCH_VMHWM_KB {line.split()[1]}\\n")

atexit.register(_peak)
from recsys.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def _suppression_database(customers: list[int]) -> str:
    """A fresh migrated database of the bench stack suppressing every 100th of ``customers``."""
    from infra.pg import connect, new_database

    url = await new_database(bench_stack().database_url, "bench_etl")
    conn = await connect(url)
    try:
        await conn.executemany(
            "INSERT INTO suppressed_customers (customer_number, actor) VALUES ($1, 'bench')",
            [(n,) for n in customers[::100]],
        )
    finally:
        await conn.close()
    return url


def _tree_peaks(pid: int, peaks: dict[int, float]) -> None:
    """Record the VmHWM of ``pid`` and its descendants (a process that just exited is skipped)."""
    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return
    for each in pids:
        try:
            peaks[each] = max(peaks.get(each, 0.0), peak_rss_mb(each))
        except (OSError, RuntimeError):
            continue


def _etl_child(
    url: str, database_url: str | None = None, engine: str = "python"
) -> tuple[int, float, float, float]:
    """(rows, seconds inside the ETL, seconds of the whole command, peak RSS in MB of the command's
    processes) of one ``recsys etl`` child process."""
    with tempfile.TemporaryDirectory(prefix="bench-etl-lake-") as lake:
        args = ["etl", "--source-url", url, "--lake", lake, "--log-level", "WARNING", "--engine", engine]
        if database_url is not None:
            args += ["--database-url", database_url]
        out_path, err_path = Path(lake) / "stdout", Path(lake) / "stderr"
        peaks: dict[int, float] = {}
        started = time.perf_counter()
        with out_path.open("w") as out, err_path.open("w") as err:
            child = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=out, stderr=err, text=True)
            while child.poll() is None:  # sampling the peak memory of the command's process tree
                _tree_peaks(child.pid, peaks)
                time.sleep(0.1)
        wall = time.perf_counter() - started
        stdout, stderr = out_path.read_text(), err_path.read_text()
    if child.returncode != 0:
        raise RuntimeError(
            f"recsys etl --engine {engine} failed ({child.returncode}): {stderr.strip()[-500:]}"
        )
    rows = int(re.search(r"(\d+) rows read", stdout).group(1))  # type: ignore[union-attr]
    # rows/s as the command computes it (from the unrounded seconds; the printed seconds have 1 decimal)
    rate = float(re.search(r"\(([\d,]+) rows/s\)", stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    seconds = rows / rate if rate else float("inf")
    if database_url is not None and "suppressed customers left out" not in stdout:
        raise RuntimeError(f"the ETL left no suppressed customer out: {stdout.strip()[-300:]}")
    own = int(re.search(r"BENCH_VMHWM_KB (\d+)", stderr).group(1)) / 1024  # type: ignore[union-attr]
    peaks[child.pid] = max(peaks.get(child.pid, 0.0), own)
    return rows, seconds, wall, sum(peaks.values())


def _crossing(
    small: tuple[float, float],
    large: tuple[float, float],
    other_small: tuple[float, float],
    other_large: tuple[float, float],
) -> float | None:
    """Rows where two lines ``t = a + rows / r`` (each through two (rows, seconds) points) cross."""

    def line(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
        slope = (q[1] - p[1]) / (q[0] - p[0])
        return p[1] - slope * p[0], slope

    a1, s1 = line(small, large)
    a2, s2 = line(other_small, other_large)
    if s1 == s2:
        return None
    rows = (a2 - a1) / (s1 - s2)
    return rows if rows > 0 else None


def main(quick: bool) -> None:
    scales = (1, 10) if quick else (1, 10, 100)
    runs = 1 if quick else 2
    report = Report(
        "etl",
        scale={
            "scales": list(scales),
            "runs": runs,
            "source": "mariadb",
            "lake": "local",
            "spark": "local[2]",
        },
    )
    rss: dict[tuple[str, int], Figure] = {}
    rows: dict[int, Figure] = {}
    walls: dict[tuple[str, int], Figure] = {}
    inside: dict[tuple[str, int], Figure] = {}
    urls = {scale: _database(scale) for scale in scales}
    try:
        for scale in scales:
            measured: dict[str, list[tuple[int, float, float, float]]] = {"python": [], "spark": []}
            for _ in range(runs):  # interleaved: both engines see the same machine
                for name in ("python", "spark"):
                    measured[name].append(_etl_child(urls[scale], engine=name))
            rows[scale] = report.add(
                Figure(f"rows {scale}x", "rows", [float(m[0]) for m in measured["python"]])
            )
            for engine, ms in measured.items():
                inside[engine, scale] = report.add(
                    Figure(f"{engine} rows/s {scale}x (in the run)", "rows/s", [m[0] / m[1] for m in ms])
                )
                walls[engine, scale] = report.add(
                    Figure(f"{engine} seconds {scale}x (whole command)", "s", [m[2] for m in ms])
                )
                rss[engine, scale] = report.add(
                    Figure(f"{engine} peak RSS {scale}x", "MB", [m[3] for m in ms])
                )
            report.ratio(
                f"spark / python rows/s {scale}x (whole command)",
                Figure("", "rows/s", [m[0] / m[2] for m in measured["spark"]]),
                Figure("", "rows/s", [m[0] / m[2] for m in measured["python"]]),
                note="> 1: Spark is faster",
            )
            report.ratio(f"spark / python peak RSS {scale}x", rss["spark", scale], rss["python", scale])
        # the suppression list's price, side by side at 10x
        shop = sa.create_engine(urls[10])
        with shop.connect() as conn:
            query = "SELECT customerNumber FROM customers ORDER BY 1"
            numbers = [int(n) for n in conn.exec_driver_sql(query).scalars()]
        shop.dispose()
        listed = run_async(_suppression_database(numbers))
        plain, with_list = [], []
        try:
            for _ in range(runs + 1):
                plain.append(_etl_child(urls[10]))
                with_list.append(_etl_child(urls[10], listed))
        finally:
            run_async(drop_database(bench_stack().database_url, listed))
        base = report.add(Figure("rows/s 10x, no suppression list", "rows/s", [m[0] / m[1] for m in plain]))
        listed_fig = report.add(
            Figure("rows/s 10x, 1 % of customers suppressed", "rows/s", [m[0] / m[1] for m in with_list])
        )
        report.ratio("rows/s with the suppression list / without", listed_fig, base, note="1.0 = free")
        top = scales[-1]
        report.ratio(f"rows {top}x / 1x", rows[top], rows[1])
        for engine_name in ("python", "spark"):
            report.ratio(
                f"{engine_name} peak RSS {top}x / 1x",
                rss[engine_name, top],
                rss[engine_name, 1],
                note="the interpreter (and the JVM) plus what the run holds",
            )
    finally:
        if os.environ.get("RECSYS_BENCH_KEEP_DB") != "1":
            for scale in scales:
                _admin(f"DROP DATABASE IF EXISTS `recsys_bench_etl_s{scale}`")
    report.print()
    top, below = scales[-1], scales[-2]  # the two largest: past the first run's warm-up noise
    points = {
        e: ((rows[below].median, walls[e, below].median), (rows[top].median, walls[e, top].median))
        for e in ("python", "spark")
    }
    cross = _crossing(*points["python"], *points["spark"])
    print(
        f"  whole-command time = start-up + rows / rate, through {below}x and "
        f"{top}x: the lines cross at "
        + (f"~{cross:,.0f} rows" if cross else "no positive row count (one engine is ahead at every size)")
    )
    per_core = inside["spark", top].median / 2  # local[2]; MariaDB shares the same two cores
    print(
        "  Glue estimate (G.1X = 4 vCPU, 1 DPU; one worker is the driver), "
        f"from {per_core:,.0f} rows/s per core:"
    )
    for workers in (2, 5, 10):
        rate = per_core * 4 * (workers - 1)
        print(
            f"    {workers:>2} workers: ~{rate:,.0f} rows/s if the database keeps up; 100M ratings in "
            f"~{1e8 / rate / 60:,.0f} min of reading, {workers} DPU-hours per hour"
        )
    print(f"  wrote {report.write()}")
