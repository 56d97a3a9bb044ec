"""Scale-out: 1, 2 and 4 ``recsys consume`` processes on one 8-shard stream, and a kill -9 drill.

Every consumer is the real command (``python -m recsys.cli consume``) with the product's default
consumer settings (lease duration 6 s, renew and take rounds 2 s), a small trained model loaded into
a database of its own (``bench_scaleout``) on the bench stack, moto Kinesis, Firehose and S3. All is
measured from outside: the lease table (``kinesis_leases``: owners and checkpoints) polled every
0.1 s, each process's CPU (user + system) from psutil, Firehose's S3 output read back at the end.

Per process count (1, 2, 4; a fresh stream each; the counts interleaved when runs are repeated):

- **balance**: the stream holds a backlog (60,000 events: 12-15 s of work for one process on the
  2-core VM once it is up; 30,000 in a quick run) and the processes are spawned together; the clock
  runs from the spawn until the leases are balanced: every shard owned by one of them, each within
  one shard of its fair share (8 / n). Start-up (spawn -> the last ``consumer started`` log line) is printed
  beside it: the first process up works alone until the others are up and ask for leases.
- **drain**: from the moment the leases are balanced and every process has checkpointed its first
  1,000 events (its cold start: the first model calls, the candidate cache filling, the one-off heap
  freeze; left out alike for every count) until every shard's checkpoint is at its last record:
  events/s in total, and per process (each shard's checkpoint progress credited to its owner at each
  poll; a process whose shards held less of the backlog finishes first and then idles); CPU per
  event: every consumer process's CPU seconds in that window over the events checkpointed in it.
  "With start-up" is the CPU from the spawn to the end over every event of the run. The share of
  the backlog in the window is printed with each run.
- ratios against 1 process: CPU per event at 2 and 4 (goal: flat, 1.0x) and events/s.

**On a 2-core machine events/s cannot grow with the process count**: moto is one Python process
and it and every consumer share the same two cores, so more processes only split the same CPU.
CPU per event is the figure that says whether scale-out costs more per event (more polling, more
lease traffic, more database connections); it is the headline here.

**kill -9**: 4 processes consume while a producer thread keeps putting events at a steady rate;
once the leases are balanced and every shard has moved on, the process holding the most leases is
SIGKILLed. Measured: the time until the others own every shard it held, against the lease duration.
A lease is judged expired on each survivor's own clock once its counter has not moved for
``lease_duration_s`` (the victim's last renewal was at most ``lease_renew_interval_s`` before the
kill, and the survivor first sees it at a take round), so the take-over lands between
``lease_duration_s - lease_renew_interval_s`` and ``lease_duration_s + lease_take_interval_s`` after
the kill (plus that take round's own queries). Then the producer stops, the drill waits until
every shard is checkpointed at its last record, and reads Firehose's S3 output: every event id put
must be there at least once (lost events), and duplicates are counted (the victim's batches
delivered but not checkpointed: replayed by the successor, at-least-once).

Run: ``python -m bench scaleout [--quick]``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench._harness import (
    STATE_DIR,
    Figure,
    Report,
    bench_stack,
    create_database,
    delivered_event_ids,
    run_async,
)

DB = "bench_scaleout"
SHARDS = 8
COUNTS = (1, 2, 4)
POLL_S = 0.1
WARM_EVENTS = 1000  # each process's first events (its cold start) are left out of the drain figures
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------- events
@dataclass
class Model:
    """The customers and product codes of the model loaded for the benchmark (events use them)."""

    customers: list[dict[str, Any]]
    codes: list[str]
    n: int = 0

    def events(self, count: int) -> list[tuple[str, bytes]]:
        """``count`` new events as (partition key, payload)."""
        out = []
        for _ in range(count):
            customer = self.customers[self.n % len(self.customers)]
            out.append(
                (
                    str(customer["customerNumber"]),
                    json.dumps(
                        {
                            "session_id": f"scaleout-{self.n}",
                            "customer_number": customer["customerNumber"],
                            "city": customer["city"],
                            "country": customer["country"],
                            "credit_limit": customer["creditLimit"],
                            "browse_history": [
                                {
                                    "product_code": self.codes[self.n % len(self.codes)],
                                    "quantity": 1,
                                    "in_shopping_cart": False,
                                }
                            ],
                        }
                    ).encode(),
                )
            )
            self.n += 1
        return out


class Ledger:
    """Every record put, by shard (sequence numbers as ints, sorted), and their event ids."""

    def __init__(self) -> None:
        self.by_shard: dict[str, list[int]] = {}
        self.ids: set[str] = set()
        self.lock = threading.Lock()

    def put(self, client: Any, stream: str, events: list[tuple[str, bytes]]) -> None:
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            resp = client.put_records(
                StreamName=stream, Records=[{"PartitionKey": k, "Data": d} for k, d in chunk]
            )
            if resp["FailedRecordCount"]:
                raise RuntimeError("moto refused records")
            with self.lock:
                for r in resp["Records"]:
                    bisect.insort(self.by_shard.setdefault(r["ShardId"], []), int(r["SequenceNumber"]))
                    self.ids.add(f"{r['ShardId']}:{r['SequenceNumber']}")

    def done(self, shard: str, checkpoint: str | None) -> int:
        """How many of the shard's records a checkpoint covers."""
        with self.lock:
            seqs = self.by_shard.get(shard, [])
            if checkpoint is None or not checkpoint.isdigit():
                return len(seqs) if checkpoint == "SHARD_END" else 0
            return bisect.bisect_right(seqs, int(checkpoint))

    def drained(self, rows: dict[str, Lease]) -> bool:
        with self.lock:
            shards = list(self.by_shard)
        return all(s in rows and self.done(s, rows[s].checkpoint) == len(self.by_shard[s]) for s in shards)

    def total(self) -> int:
        with self.lock:
            return len(self.ids)


# ------------------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """One ``recsys consume`` child (its JSON log in a temporary file)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Any
    spawned_wall: float
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def started_after(self) -> float | None:
        """Seconds from the spawn to its ``consumer started`` log line (None if not there)."""
        self.log.flush()
        self.log.seek(0)
        for line in self.log.read().decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and str(entry.get("msg", "")).startswith("consumer started"):
                return datetime.fromisoformat(entry["ts"]).timestamp() - self.spawned_wall
        return None

    def tail(self) -> str:
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


@dataclass
class Lease:
    owner: str | None
    checkpoint: str | None


@dataclass
class Stream:
    url: str
    stream: str
    delivery: str
    bucket: str

    def spawn(self, name: str) -> Proc:
        env = {
            **os.environ,
            "RECSYS_LOG_FORMAT": "json",
            "RECSYS_LOG_LEVEL": "INFO",
            "RECSYS_CONSUMER__WORKER_ID": name,
            "RECSYS_STATE_DIR": str(STATE_DIR / "scaleout-state"),
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Proc.stop; a file, so the child never blocks
        wall = time.time()
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recsys.cli",
                "consume",
                "--stream",
                self.stream,
                "--delivery-stream",
                self.delivery,
                "--dead-letters",
                f"s3://{self.bucket}/dead",
                "--database-url",
                self.url,
                "--initial-position",
                "TRIM_HORIZON",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
        )
        return Proc(name, popen, log, wall)

    async def leases(self, conn: Any) -> dict[str, Lease]:
        rows = await conn.fetch(
            "SELECT shard_id, owner, checkpoint_seq FROM kinesis_leases WHERE stream = $1", self.stream
        )
        return {r["shard_id"]: Lease(r["owner"], r["checkpoint_seq"]) for r in rows}

    def outputs(self) -> list[str]:
        """The event ids Firehose delivered to S3 (duplicates included)."""
        return delivered_event_ids(self.bucket, "out/")


def balanced(rows: dict[str, Lease], names: set[str]) -> bool:
    """Every shard owned by one of ``names``, each within one shard of its fair share."""
    if len(rows) < SHARDS or any(r.owner not in names for r in rows.values()):
        return False
    counts = Counter(r.owner for r in rows.values())
    return all(abs(counts.get(n, 0) - SHARDS / len(names)) <= 1 for n in names)


async def _until(
    st: Stream,
    conn: Any,
    procs: list[Proc],
    check: Any,
    what: str,
    *,
    timeout_s: float,
    every_s: float = POLL_S,
) -> dict[str, Lease]:
    """Poll the lease table until ``check(rows)``; fail if a consumer died or on the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await st.leases(conn)
        if check(rows):
            return rows
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"consumer {p.name} exited ({p.popen.returncode}): {p.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(every_s)


def _fresh(url: str) -> Stream:
    from bench.lab_reference import fresh_streams

    stream, delivery, bucket = fresh_streams(SHARDS)
    return Stream(url, stream, delivery, bucket)


# ------------------------------------------------------------------------------------ scale-out
async def scale_out(url: str, model: Model, processes: int, backlog: int) -> dict[str, Any]:
    import asyncpg

    from infra.aws import sync_client

    st = _fresh(url)
    ledger = Ledger()
    put0 = time.monotonic()
    await asyncio.to_thread(ledger.put, sync_client("kinesis"), st.stream, model.events(backlog))
    put_s = time.monotonic() - put0
    conn = await asyncpg.connect(url)
    spawned = time.monotonic()
    procs = [st.spawn(f"p{i}") for i in range(processes)]
    names = {p.name for p in procs}
    credited: Counter[str] = Counter()  # events checkpointed since the spawn, by owner at each poll
    done: dict[str, int] = {}
    rows: dict[str, Lease] = {}
    moves = 0

    async def poll() -> None:
        nonlocal rows, moves
        now = await st.leases(conn)
        for s, r in now.items():
            d = ledger.done(s, r.checkpoint)
            credited[r.owner or "-"] += d - done.get(s, 0)
            done[s] = d
            moves += s in rows and rows[s].owner != r.owner
        rows = now

    try:
        balanced_s: float | None = None
        while balanced_s is None or any(credited[n] < WARM_EVENTS for n in names):
            if time.monotonic() - spawned > 300:
                raise RuntimeError("the leases were not balanced, or a process not warm, in 300 s")
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"consumer {p.name} exited ({p.popen.returncode}): {p.tail()}")
            await asyncio.sleep(POLL_S)
            await poll()
            if balanced_s is None and balanced(rows, names):
                balanced_s = time.monotonic() - spawned
        window0 = time.monotonic()
        cpu0 = {p.name: p.cpu_s() for p in procs}
        start_done = sum(done.values())
        before = Counter(credited)
        moves = 0
        while not ledger.drained(rows):
            if time.monotonic() - window0 > 600:
                raise RuntimeError("the backlog was not drained in 600 s")
            await asyncio.sleep(POLL_S)
            await poll()
        drained_s = time.monotonic() - window0
        cpu = sum(p.cpu_s() - cpu0[p.name] for p in procs)
        cpu_all = sum(p.cpu_s() for p in procs)
        started = [p.started_after() for p in procs]
        per = credited - before
    finally:
        for p in procs:
            p.stop()
        await conn.close()
    out = await asyncio.to_thread(st.outputs)
    measured = sum(done.values()) - start_done
    total = ledger.total()
    return {
        "processes": processes,
        "put_s": put_s,
        "start_up_s": max((s for s in started if s is not None), default=float("nan")),
        "first_up_s": min((s for s in started if s is not None), default=float("nan")),
        "balance_s": balanced_s,
        "warm_s": window0 - spawned,
        "measured_events": measured,
        "window_s": drained_s,
        "events_per_s": measured / drained_s,
        "per_process": [per.get(p.name, 0) / drained_s for p in procs],
        "cpu_us_per_event": 1e6 * cpu / max(measured, 1),
        "cpu_us_per_event_with_start_up": 1e6 * cpu_all / max(total, 1),
        "moves_while_draining": moves,
        "duplicates": len(out) - len(set(out)),
        "lost": len(ledger.ids - set(out)),
    }


# -------------------------------------------------------------------------------------- kill -9
def _producer(
    ledger: Ledger, client: Any, stream: str, *, model: Model, rate: float, stop: threading.Event
) -> None:
    tick = 0.1
    per_tick = max(1, round(rate * tick))
    next_at = time.monotonic()
    while not stop.is_set():
        ledger.put(client, stream, model.events(per_tick))
        next_at += tick
        stop.wait(max(0.0, next_at - time.monotonic()))


async def kill_9(url: str, model: Model, rate: float) -> dict[str, Any]:
    import asyncpg

    from infra.aws import sync_client
    from recsys.settings import ConsumerSettings

    lease = ConsumerSettings()  # what `recsys consume` runs with here (no RECSYS_CONSUMER__ overrides)
    st = _fresh(url)
    ledger = Ledger()
    stop = threading.Event()
    producer = threading.Thread(
        target=_producer,
        args=(ledger, sync_client("kinesis"), st.stream),
        kwargs={"model": model, "rate": rate, "stop": stop},
        daemon=True,
    )
    producer.start()
    conn = await asyncpg.connect(url)
    procs = [st.spawn(f"k{i}") for i in range(4)]
    names = {p.name for p in procs}
    try:
        rows = await _until(st, conn, procs, lambda r: balanced(r, names), "balanced leases", timeout_s=300)
        mark = {s: ledger.done(s, r.checkpoint) for s, r in rows.items()}
        await _until(
            st,
            conn,
            procs,
            lambda r: all(ledger.done(s, x.checkpoint) > mark.get(s, 0) for s, x in r.items()),
            "every shard moving on",
            timeout_s=120,
        )
        rows = await st.leases(conn)
        held = Counter(r.owner for r in rows.values())
        victim = next(p for p in procs if p.name == max(sorted(names), key=lambda n: held.get(n, 0)))
        survivors = [p for p in procs if p is not victim]
        shards = sorted(s for s, r in rows.items() if r.owner == victim.name)
        os.kill(victim.popen.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.popen.wait()
        alive = {p.name for p in survivors}
        rows = await _until(
            st,
            conn,
            survivors,
            lambda r: all(r[s].owner in alive for s in shards),
            "the take-over",
            timeout_s=120,
            every_s=0.05,
        )
        takeover_s = time.monotonic() - killed
        mark = {s: ledger.done(s, rows[s].checkpoint) for s in shards}
        await _until(
            st,
            conn,
            survivors,
            lambda r: all(ledger.done(s, r[s].checkpoint) > mark[s] for s in shards),
            "the taken shards moving on",
            timeout_s=120,
        )
        stop.set()
        await asyncio.to_thread(producer.join)
        await _until(st, conn, survivors, ledger.drained, "every event checkpointed", timeout_s=300)
    finally:
        stop.set()
        for p in procs:
            p.stop()
        await conn.close()
    out = await asyncio.to_thread(st.outputs)
    return {
        "victim_leases": len(shards),
        "takeover_s": takeover_s,
        "lease_duration_s": lease.lease_duration_s,
        "bound_s": [
            lease.lease_duration_s - lease.lease_renew_interval_s,
            lease.lease_duration_s + lease.lease_take_interval_s,
        ],
        "events": ledger.total(),
        "lost": len(ledger.ids - set(out)),
        "duplicates": len(out) - len(set(out)),
    }


# ------------------------------------------------------------------------------------------ main
def _prepare(info: Any) -> tuple[str, Model]:
    from bench.drill import _prepare_model

    run_async(create_database(info.database_url, DB))
    url = str(info.database_url).rsplit("/", 1)[0] + "/" + DB
    workdir = STATE_DIR / "scaleout"
    workdir.mkdir(parents=True, exist_ok=True)
    customers, codes = _prepare_model(url, workdir)  # migrates, trains a small model, loads it
    return url, Model(customers, codes)


def _label(n: int) -> str:
    return f"{n} process{'es' if n > 1 else ''}"


def main(quick: bool) -> None:
    from bench.lab_reference import drop_fresh_streams

    info = bench_stack()
    url, model = _prepare(info)
    runs = 1 if quick else 2
    backlog = 30_000 if quick else 60_000
    rate = 100.0
    cores = os.cpu_count() or 1
    report = Report(
        "scaleout",
        scale={
            "shards": SHARDS,
            "backlog": backlog,
            "runs": runs,
            "cores": cores,
            "kill_rate_per_s": rate,
        },
    )
    got: dict[int, list[dict[str, Any]]] = {n: [] for n in COUNTS}
    for _ in range(runs):
        for n in COUNTS:  # interleaved, so the machine's load falls on every count alike
            try:
                one = run_async(scale_out(url, model, n, backlog))
            finally:
                drop_fresh_streams()
            print(f"  scale-out {n}: {json.dumps(one)}", flush=True)
            got[n].append(one)
    per_event: dict[int, Figure] = {}
    rates: dict[int, Figure] = {}
    faults = 0
    for n in COUNTS:
        r = got[n]
        report.add(Figure(f"{_label(n)}: leases balanced after the spawn", "s", [x["balance_s"] for x in r]))
        report.add(
            Figure(
                f"{_label(n)}: start-up (spawn to the last 'consumer started')",
                "s",
                [x["start_up_s"] for x in r],
            )
        )
        left = ", ".join(f"{x['measured_events'] / backlog:.0%}" for x in r)
        rates[n] = report.add(
            Figure(
                f"{_label(n)}: events/s in total",
                "events/s",
                [x["events_per_s"] for x in r],
                note=f"balanced -> drained: {left} of the backlog",
            )
        )
        report.add(
            Figure(
                f"{_label(n)}: events/s per process",
                "events/s",
                [v for x in r for v in x["per_process"]],
                note="every process of every run: min to max",
            )
        )
        per_event[n] = report.add(
            Figure(f"{_label(n)}: CPU per event, draining", "us/event", [x["cpu_us_per_event"] for x in r])
        )
        report.add(
            Figure(
                f"{_label(n)}: CPU per event with start-up",
                "us/event",
                [x["cpu_us_per_event_with_start_up"] for x in r],
            )
        )
        faults += sum(x["duplicates"] + x["lost"] for x in r)
    for n in COUNTS[1:]:
        report.ratio(f"CPU per event, {n} / 1 processes", per_event[n], per_event[1], note="goal: flat (1.0)")
    for n in COUNTS[1:]:
        report.ratio(
            f"events/s, {n} / 1 processes",
            rates[n],
            rates[1],
            note=f"{cores} cores shared with moto: not expected to grow" if cores <= 2 else "",
        )
    report.add(Figure("scale-out: duplicates + lost events", "events", [float(faults)]))
    try:
        killed = run_async(kill_9(url, model, rate))
    finally:
        drop_fresh_streams()
    print(f"  kill -9: {json.dumps(killed)}", flush=True)
    low, high = killed["bound_s"]
    took = report.add(
        Figure(
            f"kill -9 of 1 of 4 ({killed['victim_leases']} leases): the others own them after",
            "s",
            [killed["takeover_s"]],
            note=f"expected {low:g}-{high:g} s, plus the take round's own queries",
        )
    )
    duration = report.add(Figure("lease duration", "s", [killed["lease_duration_s"]]))
    bound = report.add(Figure("lease duration + take interval (the take-over bound)", "s", [high]))
    report.ratio("kill -9: take-over / lease duration", took, duration)
    report.ratio("kill -9: take-over / its bound", took, bound, note="goal: at most 1.0")
    report.add(
        Figure("kill -9: lost events", "events", [float(killed["lost"])], note=f"of {killed['events']} put")
    )
    report.add(Figure("kill -9: duplicates (at-least-once replays)", "events", [float(killed["duplicates"])]))
    if cores <= 2:
        print(
            f"  note: {cores} cores, shared by moto and every consumer: events/s does not scale with "
            "processes here; CPU per event is the scale-out figure",
            flush=True,
        )
    report.print()
    print(f"  wrote {report.write()}")
