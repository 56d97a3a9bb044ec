"""Start-up: ``recsys consume`` from its start to its first delivery, measured from outside.

Per run: a fresh 2-shard moto stream holding a few events, a fresh Firehose delivery stream to a moto
bucket; then ``recsys consume`` is started as a new process (``sys.executable -m recsys.cli
consume``, the trained model of the bench stack active in its PostgreSQL, JSON logs) and the clock
runs from ``Popen`` until the first object appears under the delivery stream's S3 prefix (moto's
Firehose writes one per ``PutRecordBatch``, so that is the first acknowledged delivery), polled every
10 ms. The process is then stopped with SIGTERM.

The consumer's own log lines split the time: the interpreter and the imports up to the first line
(``main`` entered), the object graph (pool, model, AWS clients) up to ``consumer started``, the first
lease taken (``processing shard``), then the first page read, recommended and delivered. A second
figure is the interpreter's start and ``import recsys.cli`` alone (``python -X importtime`` says
which modules weigh most).

``RECSYS_BENCH_STARTUP_BASELINE=/path/to/another/checkout`` runs that checkout's ``recsys consume``
(with this environment) interleaved with this one's and prints the ratios.

Headline: start -> first delivery against the 3 s target (a ratio < 1 is within it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

import psutil

from bench._harness import Figure, Report, prepared_model

TARGET_S = 3.0
PHASES = (
    ("imports", None),  # Popen -> the first log line
    ("object graph", "consumer started"),
    ("first lease", "processing shard"),
)


def _events(n: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "session_id": f"start-{i}",
                "customer_number": 103 + i,
                "city": "Nantes",
                "country": "France",
                "credit_limit": 21000.0,
                "browse_history": [{"product_code": "S10_1678", "quantity": 1, "in_shopping_cart": False}],
            }
        ).encode()
        for i in range(n)
    ]


def _first_object(s3: Any, bucket: str, prefix: str) -> bool:
    try:
        return bool(s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))
    except s3.exceptions.NoSuchBucket:
        return False


def _log_times(lines: list[str]) -> dict[str, float]:
    """The wall-clock time of the first log line and of each phase's message."""
    times: dict[str, float] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or "ts" not in entry:
            continue
        at = datetime.fromisoformat(entry["ts"]).timestamp()
        times.setdefault("first line", at)
        message = str(entry.get("msg") or entry.get("message") or "")
        for _, marker in PHASES:
            if marker is not None and message.startswith(marker):
                times.setdefault(marker, at)
    return times


def _once(database_url: str, code: str | None = None) -> dict[str, float]:
    from bench.lab_reference import fresh_streams, put_events
    from infra.aws import sync_client

    stream, delivery, bucket = fresh_streams(2)
    put_events(stream, _events(20))
    s3 = sync_client("s3")
    env = {
        **os.environ,
        "RECSYS_DATABASE_URL": database_url,
        "RECSYS_LOG_FORMAT": "json",
        "RECSYS_LOG_LEVEL": "INFO",
    }
    if code is not None:  # another checkout of the project, run with this one's environment
        env["PYTHONPATH"] = code
    command = [
        sys.executable,
        "-m",
        "recsys.cli",
        "consume",
        "--stream",
        stream,
        "--delivery-stream",
        delivery,
        "--dead-letters",
        f"s3://{bucket}/dead",
        "--initial-position",
        "TRIM_HORIZON",
    ]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: the child never blocks on it
        wall0 = time.time()
        started = time.perf_counter()
        # in the other checkout's folder: ``-m`` puts the working directory first on sys.path,
        # ahead of PYTHONPATH, so from here the child would import this checkout's code
        proc = subprocess.Popen(command, env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT, text=True)
        watched = psutil.Process(proc.pid)
        cpu = 0.0
        try:
            while not _first_object(s3, bucket, "out/"):
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"recsys consume exited with {proc.returncode}: {log.read()[-2000:]}")
                if time.perf_counter() - started > 120:
                    raise RuntimeError("no delivery within 120 s")
                times = watched.cpu_times()
                cpu = times.user + times.system
                time.sleep(0.01)
            first = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        log.seek(0)
        out = log.read()
    marks = _log_times(out.splitlines())
    result = {"first delivery": first, "cpu": cpu}
    previous = 0.0
    for name, marker in PHASES:
        at = marks.get(marker or "first line")
        if at is None:
            continue
        result[name] = at - wall0 - previous
        previous = at - wall0
    result["first batch"] = first - previous
    return result


def _import_time() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import recsys.cli"], check=True)
    return time.perf_counter() - started


def main(quick: bool) -> Report:
    runs = 2 if quick else 5
    prepared = prepared_model(1.0)
    report = Report("startup", scale={"runs": runs, "shards": 2, "events": 20, "target_s": TARGET_S})
    baseline = os.environ.get("RECSYS_BENCH_STARTUP_BASELINE")
    results: list[dict[str, float]] = []
    before: list[dict[str, float]] = []
    for _ in range(runs):  # interleaved with the baseline's runs, when there is one
        if baseline:
            before.append(_once(prepared.database_url, baseline))
        results.append(_once(prepared.database_url))
    first = report.add(
        Figure(
            "recsys consume: start -> first delivery",
            "s",
            [r["first delivery"] for r in results],
            note="a new process, measured from outside",
        )
    )
    report.add(
        Figure(
            "  its CPU seconds (all threads) until then",
            "s",
            [r["cpu"] for r in results],
            note="what bounds it on an idle machine: the interpreter and the imports are CPU work",
        )
    )
    for name in (*(n for n, _ in PHASES), "first batch"):
        values = [r[name] for r in results if name in r]
        if values:
            report.add(Figure(f"  of which: {name}", "s", values))
    report.add(Figure("python -c 'import recsys.cli'", "s", [_import_time() for _ in range(runs)]))
    if before:
        then = report.add(
            Figure(
                "baseline checkout: start -> first delivery",
                "s",
                [r["first delivery"] for r in before],
                note=f"RECSYS_BENCH_STARTUP_BASELINE={baseline}",
            )
        )
        then_cpu = report.add(Figure("  its CPU seconds until then", "s", [r["cpu"] for r in before]))
        now_cpu = report.add(
            Figure("this checkout: CPU seconds until then", "s", [r["cpu"] for r in results])
        )
        report.ratio("start -> first delivery: this / baseline", first, then, note="same run, interleaved")
        report.ratio("CPU until then: this / baseline", now_cpu, then_cpu)
    target = report.add(Figure("target", "s", [TARGET_S] * runs))
    report.ratio("start -> first delivery / target", first, target, note="headline: < 1 is within 3 s")
    report.print()
    print(f"  wrote {report.write()}")
    return report
