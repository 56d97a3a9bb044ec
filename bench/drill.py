"""Failure drill: RTO and RPO of the streaming path, measured during a steady stream.

On a stack of its own (``.state/bench/drill``: PostgreSQL is stopped on purpose, so no other
benchmark's stack is touched) with a small model loaded, a producer thread puts events into moto
Kinesis at a fixed rate and an observer thread lists the delivery prefix (moto Firehose writes an S3
object per PutRecordBatch) and notes when each ``event_id`` first appears. ``recsys consume`` runs
as a child process with the product's default consumer settings. Two faults, each ``runs`` times:

1. **consumer SIGKILL**: ``kill -9`` the consumer, start a new one at once (an ECS restart without
   the scheduling delay). Its leases are taken over after they expire (``lease_duration_s``).
2. **database stop**: ``pg_ctl stop -m fast`` on the stack's PostgreSQL, ``outage_s`` later start it
   again on the same port. The consumer keeps running (if it exits, it is restarted and that is
   reported).

Per fault:
- *first delivery*: fault -> the first event put after the fault is seen in S3 (for the database:
  restart -> the first delivery after it, since events put while ``pg_ctl stop`` is still shutting
  down can be delivered before the database is gone);
- *lag back to zero*: fault -> the last moment an event was delivered later than the pre-fault
  steady-state bound (max latency before the fault x 1.5 + 0.5 s): from then on, the backlog is gone;
- *events lost*: at the end the producer stops and the drill waits (60 s deadline) for every
  event put; ids never seen in S3 are lost (RPO). Duplicates (same ``event_id`` twice,
  at-least-once replays) are counted too.

Run: ``python -m bench drill [--quick]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import STATE_DIR, Figure, Report, run_async

RATE = 40.0  # events per second, both modes
STEADY_S = 8.0  # seconds of steady stream before each fault
DRAIN_DEADLINE_S = 90.0


@dataclass
class Ledger:
    """What the producer put and what the observer saw, with monotonic times."""

    put: dict[str, float] = field(default_factory=dict)  # event_id -> put time
    seen: dict[str, float] = field(default_factory=dict)  # event_id -> first seen in S3
    copies: dict[str, int] = field(default_factory=dict)  # event_id -> lines seen
    lock: threading.Lock = field(default_factory=threading.Lock)


def _customers(table: Any) -> list[dict[str, Any]]:
    rows = table.select(["customerNumber", "city", "country", "creditLimit"]).to_pylist()
    unique = {r["customerNumber"]: r for r in rows}
    return list(unique.values())


def _event(customer: dict[str, Any], codes: list[str], n: int) -> bytes:
    return json.dumps(
        {
            "session_id": f"drill-{n}",
            "customer_number": customer["customerNumber"],
            "city": customer["city"],
            "country": customer["country"],
            "credit_limit": customer["creditLimit"],
            "browse_history": [
                {"product_code": codes[n % len(codes)], "quantity": 1, "in_shopping_cart": False}
            ],
        }
    ).encode()


def _producer(  # noqa: PLR0917 - a thread target
    kinesis: Any,
    stream: str,
    ledger: Ledger,
    stop: threading.Event,
    customers: list[dict[str, Any]],
    codes: list[str],
) -> None:
    tick = 0.1
    per_tick = max(1, round(RATE * tick))
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        records = []
        for _ in range(per_tick):
            customer = customers[n % len(customers)]
            records.append(
                {"PartitionKey": str(customer["customerNumber"]), "Data": _event(customer, codes, n)}
            )
            n += 1
        response = kinesis.put_records(StreamName=stream, Records=records)
        now = time.monotonic()
        with ledger.lock:
            for rec in response["Records"]:
                if not rec.get("ErrorCode"):
                    ledger.put[f"{rec['ShardId']}:{rec['SequenceNumber']}"] = now
        next_at += tick
        time.sleep(max(0.0, next_at - time.monotonic()))


def _observer(s3: Any, bucket: str, prefix: str, ledger: Ledger, stop: threading.Event) -> None:
    known: set[str] = set()
    while not stop.is_set():
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"] not in known)
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            now = time.monotonic()
            with ledger.lock:
                for line in body.splitlines():
                    if line.strip():
                        eid = json.loads(line)["event_id"]
                        ledger.seen.setdefault(eid, now)
                        ledger.copies[eid] = ledger.copies.get(eid, 0) + 1
            known.add(key)
        stop.wait(0.2)


class ConsumerProcess:
    """``recsys consume`` as a child process (its output in a log file)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.peak_rss_mb = 0.0  # the largest peak RSS of the children reaped so far

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recsys.cli", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _reap(self, deadline_s: float) -> bool:
        """Wait for the child with ``os.wait4`` (its peak RSS comes with it); False on timeout."""
        assert self.proc is not None
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by poll()
                return True
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024)
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self._reap(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not self._reap(60):
                self.kill()


def _wait(predicate: Any, deadline_s: float, what: str, consumer: ConsumerProcess | None = None) -> float:
    """Poll until ``predicate()``; restart the consumer if it died (as ECS would). Returns the time."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        if consumer is not None and consumer.exited() is not None:
            print(f"  consumer exited with {consumer.exited()} while waiting for {what}; restarting it")
            consumer.start()
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not reached within {deadline_s:.0f}s")


def _steady_bound(ledger: Ledger, since: float, until: float) -> float:
    with ledger.lock:
        lat = [ledger.seen[e] - t for e, t in ledger.put.items() if since <= t <= until and e in ledger.seen]
    return (max(lat) if lat else 2.0) * 1.5 + 0.5


def _first_after(ledger: Ledger, fault: float) -> bool:
    with ledger.lock:
        return any(t > fault and e in ledger.seen for e, t in ledger.put.items())


def _recovery(ledger: Ledger, fault: float, bound: float) -> tuple[float, float]:
    """(fault -> first post-fault event seen, fault -> lag back to the steady bound)."""
    with ledger.lock:
        first = min(ledger.seen[e] for e, t in ledger.put.items() if t > fault and e in ledger.seen)
        late = [
            ledger.seen[e]
            for e, t in ledger.put.items()
            if e in ledger.seen and ledger.seen[e] - t > bound and ledger.seen[e] >= fault
        ]
    return first - fault, (max(late) if late else first) - fault


def _caught_up(ledger: Ledger, bound: float) -> bool:
    """Every event put more than ``bound`` ago has been seen (the backlog is gone)."""
    now = time.monotonic()
    with ledger.lock:
        return all(e in ledger.seen for e, t in ledger.put.items() if now - t > bound)


def _prepare_model(database_url: str, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from infra.pg import migrate
    from model_store.artifacts import export_trained
    from model_store.loader import load_vectors
    from model_store.testing import synthetic_ratings
    from model_store.training import fit
    from recsys.settings import TrainSettings

    run_async(migrate(database_url))
    table = synthetic_ratings(n_customers=120, n_products=110, ratings_per_customer=20, seed=5)
    model = fit(table, TrainSettings(epochs=5, seed=1))
    artifacts = str(workdir / "artifacts")
    version = export_trained(artifacts, model)
    run_async(load_vectors(database_url, artifacts, version))
    codes = sorted(set(table.column("productCode").to_pylist()))
    return _customers(table), codes


def main(quick: bool = False) -> None:
    from consumer.setup import ensure_delivery_stream, ensure_stream
    from infra.aws import sync_client
    from recsys.stack import LocalStack

    runs = 1 if quick else 3
    outage_s = 5.0 if quick else 10.0
    workdir = STATE_DIR / "drill"
    workdir.mkdir(parents=True, exist_ok=True)
    local = LocalStack(workdir / "stack")
    info = local.up()
    saved = {k: os.environ.get(k) for k in info.env()}
    os.environ.update({k: v for k, v in info.env().items() if k.startswith("AWS_")})
    tag = uuid.uuid4().hex[:8]
    stream, delivery, bucket = f"drill-{tag}", f"drill-recs-{tag}", f"drill-{tag}"
    ledger = Ledger()
    stop_threads = threading.Event()  # the observer
    stop_producer = threading.Event()
    threads: list[threading.Thread] = []
    consumer: ConsumerProcess | None = None
    try:
        print("  loading a small model into the drill stack ...", flush=True)
        customers, codes = _prepare_model(info.database_url, workdir)
        ensure_stream(stream, 2)
        ensure_delivery_stream(delivery, f"s3://{bucket}/out")
        env = {**os.environ, **{k: v for k, v in info.env().items() if k.startswith("AWS_")}}
        env["RECSYS_LOG_LEVEL"] = "WARNING"
        consumer = ConsumerProcess(
            [
                "consume",
                "--stream",
                stream,
                "--delivery-stream",
                delivery,
                "--dead-letters",
                f"s3://{bucket}/dead",
                "--database-url",
                info.database_url,
                "--state-dir",
                str(workdir / "consumer-state"),
            ],
            env,
            workdir / f"consumer-{tag}.log",
        )
        consumer.start()
        threads = [
            threading.Thread(
                target=_producer,
                args=(sync_client("kinesis"), stream, ledger, stop_producer, customers, codes),
                daemon=True,
            ),
            threading.Thread(
                target=_observer, args=(sync_client("s3"), bucket, "out/", ledger, stop_threads), daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        _wait(lambda: _first_after(ledger, started), 120, "the first delivery", consumer)

        figures: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            figures.setdefault(name, []).append(value)

        for run in range(runs):
            # --- fault 1: SIGKILL the consumer, restart it at once
            window_start = time.monotonic()
            time.sleep(STEADY_S)
            _wait(lambda: _caught_up(ledger, 5.0), 60, "steady state", consumer)
            bound = _steady_bound(ledger, window_start, time.monotonic() - 1.0)
            fault = time.monotonic()
            consumer.kill()
            consumer.start()
            _wait(lambda f=fault: _first_after(ledger, f), 180, "first delivery after SIGKILL", consumer)
            _wait(lambda b=bound: _caught_up(ledger, b), 180, "backlog drained after SIGKILL", consumer)
            first, lag = _recovery(ledger, fault, bound)
            record("kill: first delivery", first)
            record("kill: lag back to zero", lag)
            print(
                f"  run {run + 1}: SIGKILL -> first delivery {first:.1f}s, "
                f"lag back to zero {lag:.1f}s (bound {bound:.1f}s)",
                flush=True,
            )

            # --- fault 2: stop PostgreSQL, start it again after the outage
            window_start = time.monotonic()
            time.sleep(STEADY_S)
            _wait(lambda: _caught_up(ledger, 5.0), 60, "steady state", consumer)
            bound = _steady_bound(ledger, window_start, time.monotonic() - 1.0)
            restarts = consumer.starts
            fault = time.monotonic()
            local._stop_postgres()  # the PostgreSQL half of LocalStack.down(): pg_ctl stop -m fast
            time.sleep(outage_s)
            local.up()  # starts PostgreSQL again on its recorded port; moto keeps running
            back = time.monotonic()
            _wait(
                lambda f=back: _first_after(ledger, f),
                180,
                "first delivery after the database restart",
                consumer,
            )
            _wait(
                lambda b=bound: _caught_up(ledger, b),
                180,
                "backlog drained after the database restart",
                consumer,
            )
            _, lag = _recovery(ledger, fault, bound)
            with ledger.lock:
                resumed = min(t for t in ledger.seen.values() if t >= back) - back
            record("db stop: restart -> first delivery", resumed)
            record("db stop: lag back to zero", lag)
            record("db stop: lag back to zero after restart", lag - (back - fault))
            print(
                f"  run {run + 1}: db down {back - fault:.1f}s; restart -> first delivery {resumed:.1f}s, "
                f"lag back to zero {lag:.1f}s after the stop ({lag - (back - fault):.1f}s after restart); "
                f"consumer restarts during the outage: {consumer.starts - restarts}",
                flush=True,
            )
            record("db stop: consumer restarts", float(consumer.starts - restarts))

        # --- RPO: stop producing, wait for everything, count what is missing
        produced_until = time.monotonic()
        stop_producer.set()
        threads[0].join(timeout=10)
        with contextlib.suppress(TimeoutError):
            _wait(lambda: _caught_up(ledger, 0.0), DRAIN_DEADLINE_S, "every event delivered", consumer)
        with ledger.lock:
            missing = [e for e in ledger.put if e not in ledger.seen]
            duplicates = sum(c - 1 for c in ledger.copies.values() if c > 1)
            sent = len(ledger.put)
        print(
            f"  {sent} events put over {produced_until - started:.0f}s, {len(missing)} missing, "
            f"{duplicates} duplicate deliveries"
        )

        report = Report(
            "drill",
            scale={
                "rate_events_per_s": RATE,
                "runs": runs,
                "db_outage_s": outage_s,
                "shards": 2,
                "quick": quick,
            },
        )
        for name, values in figures.items():
            unit = "count" if name.endswith("restarts") else "s"
            report.add(Figure(name, unit, values))
        report.add(Figure("events put", "count", [float(sent)]))
        report.add(Figure("events lost (RPO)", "count", [float(len(missing))], note="must be 0"))
        report.add(Figure("duplicate deliveries", "count", [float(duplicates)], note="at-least-once replays"))
        consumer.stop()
        report.add(
            Figure(
                "consumer peak RSS",
                "MB",
                [consumer.peak_rss_mb],
                note=f"largest of the {consumer.starts} `recsys consume` processes (os.wait4)",
            )
        )
        report.print()
        print(f"  wrote {report.write()}")
        if missing:
            raise AssertionError(f"{len(missing)} events were lost, e.g. {missing[:3]}")
    finally:
        stop_producer.set()
        stop_threads.set()
        for thread in threads:
            thread.join(timeout=10)
        if consumer is not None:
            consumer.stop()
        local.down()
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
