"""ETL throughput and peak memory at 1x, 10x, 100x data: memory must not grow with the rows.

Each scale is seeded into its own MariaDB database (``RECSYS_BENCH_MYSQL_URL``, default the
machine's root@127.0.0.1:3306), then ``recsys etl`` runs as a child process writing to a local lake.
Its peak RSS is the ``VmHWM`` the child reads from ``/proc/self/status`` as it exits: per address
space, so it is the ETL's own. (``ru_maxrss`` from ``wait4`` is not: Linux carries the parent's
high-water mark into the child across fork+exec, and the parent here has just generated the data.) The
headline is the ratio of peak RSS at the largest scale to 1x, next to the ratio of rows.
Databases are dropped at the end unless ``RECSYS_BENCH_KEEP_DB=1`` (reseeding 100x takes a while).

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

import sqlalchemy as sa

from bench._harness import Figure, Report, bench_stack, drop_database, run_async

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


def _etl_child(url: str, database_url: str | None = None) -> tuple[int, float, float]:
    """(rows, seconds inside the ETL, peak RSS in MB) of one ``recsys etl`` child process."""
    with tempfile.TemporaryDirectory(prefix="bench-etl-lake-") as lake:
        args = ["etl", "--source-url", url, "--lake", lake, "--log-level", "WARNING"]
        if database_url is not None:
            args += ["--database-url", database_url]
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=3600, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"recsys etl failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    rows = int(re.search(r"(\d+) rows read", done.stdout).group(1))  # type: ignore[union-attr]
    # rows/s as the command computes it (from the unrounded seconds; the printed seconds have 1 decimal)
    rate = float(re.search(r"\(([\d,]+) rows/s\)", done.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    seconds = rows / rate if rate else float("inf")
    if database_url is not None and "suppressed customers left out" not in done.stdout:
        raise RuntimeError(f"the ETL left no suppressed customer out: {done.stdout.strip()[-300:]}")
    peak_kb = int(re.search(r"BENCH_VMHWM_KB (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return rows, seconds, peak_kb / 1024


def main(quick: bool) -> None:
    scales = (1, 10) if quick else (1, 10, 100)
    runs = 1 if quick else 2
    report = Report("etl", scale={"scales": list(scales), "runs": runs, "source": "mariadb", "lake": "local"})
    rss: dict[int, Figure] = {}
    rows: dict[int, Figure] = {}
    urls = {scale: _database(scale) for scale in scales}
    try:
        for scale in scales:
            measured = [_etl_child(urls[scale]) for _ in range(runs)]
            rows[scale] = report.add(Figure(f"rows {scale}x", "rows", [float(m[0]) for m in measured]))
            report.add(Figure(f"rows/s {scale}x", "rows/s", [m[0] / m[1] for m in measured]))
            rss[scale] = report.add(Figure(f"peak RSS {scale}x", "MB", [m[2] for m in measured]))
        # the suppression list's price, side by side at 10x
        engine = sa.create_engine(urls[10])
        with engine.connect() as conn:
            query = "SELECT customerNumber FROM customers ORDER BY 1"
            numbers = [int(n) for n in conn.exec_driver_sql(query).scalars()]
        engine.dispose()
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
        if top != 10:
            report.ratio(f"peak RSS {top}x / 10x", rss[top], rss[10], note="both above one chunk: ~1.0")
        report.ratio(
            f"peak RSS {top}x / 1x",
            rss[top],
            rss[1],
            note="1x fits in one chunk; the rest is the interpreter and its libraries",
        )
    finally:
        if os.environ.get("RECSYS_BENCH_KEEP_DB") != "1":
            for scale in scales:
                _admin(f"DROP DATABASE IF EXISTS `recsys_bench_etl_s{scale}`")
    report.print()
    print(f"  wrote {report.write()}")
