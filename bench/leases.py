"""Lease moves measured from outside: scale-out, a rolling deploy, kill -9, skewed traffic.

Every consumer is its own process (``python -m bench.leases --child``: ``recsys.runtime``'s consumer
with the deterministic fake recommender of ``recsys.testing``, so the figures are the lease
machinery's and the record path's, not the model's) on the bench stack (moto Kinesis, Firehose and
S3; PostgreSQL in a database of its own, ``bench_leases``). Each scenario gets a fresh 8-shard
stream.

- **scale-out**: a backlog of N events, then 1, 2 or 4 processes started together: time from the
  last process's start-up until the leases are balanced (each process within one lease of its fair
  share), time until every event is delivered (events/s in total and per process), CPU seconds per
  event (each child's CPU from its "up" line to its exit, over what it delivered), duplicates.
- **kill -9**: 2 processes on a backlog; one is killed: seconds until the survivor owns every
  shard (against the lease duration), events lost.
- **rolling deploy**: 3 processes at a steady rate (unique customers, so each event's row appears
  once in ``latest_recommendations``); put-to-visible p50/p99 in a steady window, then while the 3
  are replaced one by one (SIGTERM, then a new process); duplicates and lost events over the whole
  run; the seconds each lease spent without an owner (the lease table polled every 50 ms).
- **skewed traffic**: one shard carries 10x the others, 2 processes: time until the hot shard has a
  process of its own, lease moves in the minute after that, and each process's CPU and records/s as
  written in the lease table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench._harness import (
    Figure,
    Report,
    bench_stack,
    create_database,
    delivered_event_ids,
    percentile,
    run_async,
)

DB = "bench_leases"
SHARDS = 8
LEASE = {"lease_duration_s": 6.0, "lease_renew_interval_s": 1.0, "lease_take_interval_s": 1.0}


def _event(n: int, customer: int | None = None) -> bytes:
    return json.dumps(
        {
            "session_id": f"bench-{n}",
            "customer_number": n % 5000 + 1 if customer is None else customer,
            "city": "Nantes",
            "country": "France",
            "credit_limit": 21000.0,
            "browse_history": [
                {"product_code": f"S10_{1000 + n % 50}", "quantity": 1, "in_shopping_cart": False}
            ],
        }
    ).encode()


# ---------------------------------------------------------------------------------------- the child
def _child(config: dict[str, Any]) -> None:
    """One consumer process until SIGTERM; prints "up" when running and a JSON line at exit."""
    from infra.logs import configure_logging
    from recsys import runtime
    from recsys.settings import ConsumerSettings, Settings
    from recsys.testing import FakeRecommender

    configure_logging("WARNING")
    settings = Settings(
        database_url=config["database_url"],
        stream=config["stream"],
        delivery_stream=config["delivery"],
        dead_letters=f"s3://{config['bucket']}/dead",
        initial_position="TRIM_HORIZON",
        consumer=ConsumerSettings(worker_id=config["name"], **config["consumer"]),
    )

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with runtime.consumer(settings, recommender=FakeRecommender(), suppression=None) as consumer:
            cpu0 = time.process_time()
            print("up", flush=True)
            await consumer.run(stop)
            return {
                "delivered": consumer.stats.delivered,
                "cpu_s": time.process_time() - cpu0,
                "moves": consumer.moves,
            }

    result = asyncio.run(main())
    result["rusage_cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------- the parent
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    up_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def wait_up(self, timeout_s: float = 120) -> float:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"consumer {self.name} exited before it was up")
            if line.strip() == b"up":
                self.up_at = time.monotonic()
                return self.up_at
        raise RuntimeError(f"consumer {self.name} was not up within {timeout_s} s")

    def stop(self) -> dict[str, Any]:
        self.popen.send_signal(signal.SIGTERM)
        out, _ = self.popen.communicate(timeout=120)
        lines = [x for x in out.decode().splitlines() if x.startswith("{")]
        self.result = json.loads(lines[-1]) if lines else {}
        return self.result


@dataclass
class Scenario:
    url: str
    stream: str
    delivery: str
    bucket: str
    consumer: dict[str, Any]

    def spawn(self, name: str) -> Proc:
        config = {
            "database_url": self.url,
            "stream": self.stream,
            "delivery": self.delivery,
            "bucket": self.bucket,
            "name": name,
            "consumer": self.consumer,
        }
        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.leases", "--child", json.dumps(config)],
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        return Proc(name, popen)

    def outputs(self) -> list[str]:
        """The event ids Firehose delivered (duplicates included)."""
        return delivered_event_ids(self.bucket, "out/")

    async def owners(self) -> dict[str, str | None]:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT shard_id, owner FROM kinesis_leases WHERE stream = $1", self.stream
            )
        finally:
            await conn.close()
        return {r["shard_id"]: r["owner"] for r in rows}


def _balanced(owners: dict[str, str | None], names: set[str]) -> bool:
    if len(owners) < SHARDS or any(o not in names for o in owners.values()):
        return False
    counts = Counter(owners.values())
    return all(abs(counts.get(n, 0) - SHARDS / len(names)) < 1 for n in names)


def _wait(condition: Any, timeout_s: float, what: str, every_s: float = 0.05) -> float:
    """Poll ``condition`` (sync) until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(every_s)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def _scenario(url: str, **consumer: Any) -> Iterator[Scenario]:
    from bench.lab_reference import drop_fresh_streams, fresh_streams

    stream, delivery, bucket = fresh_streams(SHARDS)
    try:
        yield Scenario(url, stream, delivery, bucket, {**LEASE, **consumer})
    finally:
        drop_fresh_streams()


def _put(sc: Scenario, payloads: list[bytes], keys: list[str] | None = None) -> list[str]:
    from infra.aws import sync_client

    client = sync_client("kinesis")
    ids: list[str] = []
    for start in range(0, len(payloads), 500):
        chunk = payloads[start : start + 500]
        resp = client.put_records(
            StreamName=sc.stream,
            Records=[
                {
                    "PartitionKey": keys[start + i] if keys else str(json.loads(p)["customer_number"]),
                    "Data": p,
                }
                for i, p in enumerate(chunk)
            ],
        )
        if resp["FailedRecordCount"]:
            raise RuntimeError("moto refused records")
        ids += [f"{r['ShardId']}:{r['SequenceNumber']}" for r in resp["Records"]]
    return ids


# ------------------------------------------------------------------------------------------ scale-out
def _cpu_s(pid: int) -> float:
    """A child's CPU seconds so far (user + system, from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scale_out(url: str, processes: int, events: int) -> dict[str, Any]:
    """Start ``processes`` together on a backlog of ``events``; from the moment the leases are
    balanced until the backlog is delivered: events/s in total and per process, CPU per event."""
    with _scenario(url) as sc:
        ids = set(_put(sc, [_event(n) for n in range(events)]))
        started = time.monotonic()
        procs = [sc.spawn(f"p{i}") for i in range(processes)]
        try:
            last_up = max(p.wait_up() for p in procs)
            names = {p.name for p in procs}
            balanced = _wait(lambda: _balanced(run_async(sc.owners()), names), 180, "balanced leases", 0.1)
            cpu0 = {p.name: _cpu_s(p.popen.pid) for p in procs}
            owners = run_async(sc.owners())
            before = Counter(eid.split(":", 1)[0] for eid in set(sc.outputs()))
            done = _wait(lambda: ids <= set(sc.outputs()), 600, "every event delivered", 0.2)
            cpu = sum(_cpu_s(p.popen.pid) - cpu0[p.name] for p in procs)
            moved = run_async(sc.owners()) != owners
        finally:
            for p in procs:
                p.stop()
        out = sc.outputs()
        after = Counter(eid.split(":", 1)[0] for eid in set(out)) - before
        seconds = done - balanced
        measured = sum(after.values())
        per: Counter[str | None] = Counter()
        for shard, n in after.items():
            per[owners.get(shard)] += n
        return {
            "start_up_s": last_up - started,
            "balance_s": balanced - last_up,
            "measured_events": measured,
            "events_per_s": measured / seconds,
            "per_process": [per.get(p.name, 0) / seconds for p in procs],
            "cpu_us_per_event": 1e6 * cpu / max(measured, 1),
            "moved_while_measuring": moved,
            "duplicates": len(out) - len(set(out)),
            "lost": len(ids - set(out)),
        }


# -------------------------------------------------------------------------------------------- kill -9
def kill_9(url: str, events: int) -> dict[str, Any]:
    with _scenario(url) as sc:
        ids = set(_put(sc, [_event(n) for n in range(events)]))
        procs = [sc.spawn("k0"), sc.spawn("k1")]
        try:
            for p in procs:
                p.wait_up()
            _wait(lambda: _balanced(run_async(sc.owners()), {"k0", "k1"}), 180, "balanced", 0.2)
            procs[0].popen.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            procs[0].popen.wait()
            owned = _wait(
                lambda: set(run_async(sc.owners()).values()) == {"k1"}, 120, "the survivor owning all"
            )
            _wait(lambda: len(set(sc.outputs()) & ids) >= len(ids), 600, "every event delivered", 0.5)
        finally:
            procs[1].stop()
        out = sc.outputs()
        return {
            "takeover_s": owned - killed,
            "lease_duration_s": LEASE["lease_duration_s"],
            "lost": len(ids - set(out)),
            "duplicates": len(out) - len(set(out)),
        }


# ------------------------------------------------------------------------------------- rolling deploy
class Visibility:
    """Events put at a steady rate (one customer each); when each becomes visible in the latest table."""

    def __init__(self, sc: Scenario, rate: float) -> None:
        self.sc, self.rate = sc, rate
        self.put_at: dict[int, float] = {}
        self.seen_at: dict[int, float] = {}
        self.ids: list[str] = []
        self.unowned: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._n = 0

    async def run(self) -> None:
        import asyncpg

        from infra.aws import sync_client

        client = sync_client("kinesis")
        conn = await asyncpg.connect(self.sc.url)
        try:
            await conn.execute("TRUNCATE latest_recommendations")
            tick = 0.1
            per_tick = max(1, round(self.rate * tick))
            next_put = time.monotonic()
            last_poll = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_put:
                    batch = list(range(self._n, self._n + per_tick))
                    self._n += per_tick
                    resp = await asyncio.to_thread(
                        client.put_records,
                        StreamName=self.sc.stream,
                        Records=[{"PartitionKey": f"c{c}", "Data": _event(c, customer=c + 1)} for c in batch],
                    )
                    at = time.monotonic()
                    for c in batch:
                        self.put_at[c + 1] = at
                    self.ids += [f"{r['ShardId']}:{r['SequenceNumber']}" for r in resp["Records"]]
                    next_put += tick
                waiting = [c for c in self.put_at if c not in self.seen_at]
                if waiting:
                    rows = await conn.fetch(
                        "SELECT customer_number FROM latest_recommendations WHERE customer_number = ANY($1)",
                        waiting,
                    )
                    at = time.monotonic()
                    for r in rows:
                        self.seen_at[r["customer_number"]] = at
                owners = await conn.fetch(
                    "SELECT shard_id, owner FROM kinesis_leases WHERE stream = $1", self.sc.stream
                )
                now = time.monotonic()
                for r in owners:
                    if r["owner"] is None:
                        self.unowned[r["shard_id"]] = self.unowned.get(r["shard_id"], 0.0) + now - last_poll
                last_poll = now
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()

    def latencies(self, start: float, end: float) -> list[float]:
        return [self.seen_at[c] - t for c, t in self.put_at.items() if start <= t < end and c in self.seen_at]


def rolling_deploy(url: str, steady_s: float, rate: float) -> dict[str, Any]:
    with _scenario(url) as sc:
        vis = Visibility(sc, rate)

        async def scenario() -> dict[str, Any]:
            watcher = asyncio.create_task(vis.run())
            procs = {f"old-{i}": sc.spawn(f"old-{i}") for i in range(3)}
            for p in procs.values():
                await asyncio.to_thread(p.wait_up)

            async def balanced() -> None:
                deadline = time.monotonic() + 180
                while not _balanced(await sc.owners(), set(procs)):
                    if time.monotonic() > deadline:
                        raise RuntimeError("not balanced")
                    await asyncio.sleep(0.1)

            await balanced()
            await asyncio.sleep(3)  # let the start-up backlog clear before the steady window
            vis.unowned.clear()
            steady_start = time.monotonic()
            await asyncio.sleep(steady_s)  # the steady window: a measurement period, not a wait on the system
            rollout_start = time.monotonic()
            for i in range(3):
                old = procs.pop(f"old-{i}")
                await asyncio.to_thread(old.stop)
                new = sc.spawn(f"new-{i}")
                procs[new.name] = new
                await asyncio.to_thread(new.wait_up)
                await balanced()
            rollout_end = time.monotonic()
            vis.stop()
            await watcher
            ids = set(vis.ids)
            for _ in range(240):  # the last events still on their way: up to 2 minutes (lost if never)
                if ids <= set(await asyncio.to_thread(sc.outputs)):
                    break
                await asyncio.sleep(0.5)
            for p in procs.values():
                await asyncio.to_thread(p.stop)
            return {
                "steady": vis.latencies(steady_start, rollout_start),
                "rollout": vis.latencies(rollout_start, rollout_end),
                "rollout_s": rollout_end - rollout_start,
            }

        got = asyncio.run(scenario())
        ids = set(vis.ids)
        out = sc.outputs()
        return {
            **got,
            "duplicates": len(out) - len(set(out)),
            "lost": len(ids - set(out)),
            "unowned_s": dict(vis.unowned),
        }


# -------------------------------------------------------------------------------------- skewed traffic
def _keys_per_shard(sc: Scenario) -> list[str]:
    from infra.aws import sync_client

    shards = sync_client("kinesis").list_shards(StreamName=sc.stream)["Shards"]
    keys = []
    for shard in sorted(shards, key=lambda s: s["ShardId"]):
        low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
        keys.append(
            next(
                k
                for k in (f"key-{i}" for i in range(100_000))
                if low
                <= int.from_bytes(hashlib.md5(k.encode()).digest(), "big")
                <= high  # Kinesis's own hash
            )
        )
    return keys


def skewed(url: str, rate: float, after_s: float) -> dict[str, Any]:
    with _scenario(url, cpu_warmup_s=5.0, load_window_s=5.0) as sc:
        keys = _keys_per_shard(sc)
        pattern = [keys[0]] * 10 + keys[1:]
        stop = asyncio.Event()
        n = [0]

        async def traffic() -> None:
            per_tick = max(len(pattern), round(rate * 0.2))
            while not stop.is_set():
                batch = [pattern[i % len(pattern)] for i in range(per_tick)]
                await asyncio.to_thread(
                    _put,
                    sc,
                    [
                        _event(n[0] + i, customer=1 + keys.index(batch[i]) * 1000 + (n[0] + i) % 1000)
                        for i in range(per_tick)
                    ],
                    batch,
                )
                n[0] += per_tick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)

        async def scenario() -> dict[str, Any]:
            import asyncpg

            producer = asyncio.create_task(traffic())
            procs = [sc.spawn("s0"), sc.spawn("s1")]
            for p in procs:
                await asyncio.to_thread(p.wait_up)
            started = time.monotonic()
            hot = f"shardId-{0:012d}"

            def split(owners: dict[str, str | None]) -> bool:
                owner = owners.get(hot)
                return owner is not None and sum(1 for o in owners.values() if o == owner) == 1

            while not split(await sc.owners()):
                if time.monotonic() - started > 240:
                    raise RuntimeError("the hot shard never got a process of its own")
                await asyncio.sleep(0.2)
            balanced = time.monotonic() - started
            conn = await asyncpg.connect(sc.url)
            try:
                switches = await conn.fetchval(
                    "SELECT sum(owner_switches)::bigint FROM kinesis_leases WHERE stream = $1", sc.stream
                )
                await asyncio.sleep(after_s)  # the observation window once balanced
                later = await conn.fetchval(
                    "SELECT sum(owner_switches)::bigint FROM kinesis_leases WHERE stream = $1", sc.stream
                )
                per = await conn.fetch(
                    """SELECT owner, sum(load_rps) AS rps, max(owner_cpu) AS cpu, count(*) AS leases
                       FROM kinesis_leases WHERE stream = $1 GROUP BY owner ORDER BY owner""",
                    sc.stream,
                )
            finally:
                await conn.close()
            stop.set()
            await producer
            for p in procs:
                await asyncio.to_thread(p.stop)
            return {
                "balance_s": balanced,
                "moves_per_min_after": (int(later) - int(switches)) * 60 / after_s,
                "workers": [
                    {
                        "leases": r["leases"],
                        "rps": float(r["rps"]),
                        "cpu": None if r["cpu"] is None else float(r["cpu"]),
                    }
                    for r in per
                ],
            }

        return asyncio.run(scenario())


def _cores(cpu: float | None) -> str:
    return "not reported yet" if cpu is None else f"{cpu:.3f} cores"


# ------------------------------------------------------------------------------------------------ main
def _database(info: Any) -> str:
    from infra.pg import migrate

    run_async(create_database(info.database_url, DB))
    url = str(info.database_url).rsplit("/", 1)[0] + "/" + DB
    run_async(migrate(url))
    return url


def main(quick: bool) -> None:
    info = bench_stack()
    url = _database(info)
    events = 4000 if quick else 12000
    report = Report("leases", scale={"shards": SHARDS, "backlog_events": events, **LEASE})
    per_event: dict[int, Figure] = {}
    rates: dict[int, Figure] = {}
    dups = 0
    for processes in (1, 2, 4):
        got = scale_out(url, processes, events)
        print(f"  scale-out {processes}: {json.dumps(got)}", flush=True)
        label = f"{processes} process{'es' if processes > 1 else ''}"
        report.add(Figure(f"{label}: leases balanced after the last start-up", "s", [got["balance_s"]]))
        report.add(Figure(f"{label}: start-up (spawn to running)", "s", [got["start_up_s"]]))
        rates[processes] = report.add(
            Figure(f"{label}: events/s in total", "events/s", [got["events_per_s"]])
        )
        report.add(
            Figure(
                f"{label}: events/s per process",
                "events/s",
                got["per_process"],
                note="one run per process: min to max",
            )
        )
        per_event[processes] = report.add(
            Figure(f"{label}: CPU per event", "us/event", [got["cpu_us_per_event"]])
        )
        dups += got["duplicates"] + got["lost"]
    report.ratio("CPU per event, 4 / 1 processes", per_event[4], per_event[1], note="1.0 = flat")
    report.ratio("CPU per event, 2 / 1 processes", per_event[2], per_event[1])
    report.add(Figure("scale-out: duplicates + lost events", "events", [float(dups)]))
    killed = kill_9(url, events)
    print(f"  kill -9: {json.dumps(killed)}", flush=True)
    report.add(
        Figure(
            "kill -9: the survivor owns every shard after",
            "s",
            [killed["takeover_s"]],
            note=f"lease duration {killed['lease_duration_s']} s",
        )
    )
    report.add(Figure("kill -9: lost events", "events", [float(killed["lost"])]))
    report.add(
        Figure("kill -9: duplicates (at-least-once, same event_id)", "events", [float(killed["duplicates"])])
    )
    rolled = rolling_deploy(url, steady_s=15 if quick else 30, rate=50.0)
    steady_p99 = percentile(rolled["steady"], 0.99)
    rollout_p99 = percentile(rolled["rollout"], 0.99)
    print(
        f"  rolling deploy: steady p50 {percentile(rolled['steady'], 0.5):.3f} p99 {steady_p99:.3f}, "
        f"rollout p50 {percentile(rolled['rollout'], 0.5):.3f} p99 {rollout_p99:.3f}, "
        f"dup {rolled['duplicates']} lost {rolled['lost']} unowned {rolled['unowned_s']}",
        flush=True,
    )
    steady = report.add(Figure("rolling deploy: put-to-visible p99, steady", "s", [steady_p99]))
    during = report.add(Figure("rolling deploy: put-to-visible p99, during the rollout", "s", [rollout_p99]))
    report.ratio("rolling deploy: p99 during / steady", during, steady, note="goal: at most 2x")
    report.add(Figure("rolling deploy: duplicates", "events", [float(rolled["duplicates"])]))
    report.add(Figure("rolling deploy: lost", "events", [float(rolled["lost"])]))
    unowned = list(rolled["unowned_s"].values()) or [0.0]
    report.add(
        Figure(
            "rolling deploy: time a lease spent without an owner",
            "s",
            [max(unowned)],
            note=f"the worst lease; {len(unowned)} leases were ever unowned, {sum(unowned):.2f} s in all",
        )
    )
    report.add(Figure("rolling deploy: duration (3 replacements)", "s", [rolled["rollout_s"]]))
    skew = skewed(url, rate=85.0, after_s=30 if quick else 60)
    print(f"  skewed: {json.dumps(skew)}", flush=True)
    report.add(Figure("skewed 10x: hot shard on a process of its own after", "s", [skew["balance_s"]]))
    report.add(
        Figure("skewed 10x: lease moves per minute once balanced", "moves/min", [skew["moves_per_min_after"]])
    )
    for i, w in enumerate(skew["workers"]):
        report.add(
            Figure(
                f"skewed 10x: process {i} load",
                "records/s",
                [w["rps"]],
                note=f"{w['leases']} leases, CPU {_cores(w['cpu'])}",
            )
        )
    report.print()
    print(f"  wrote {report.write()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", metavar="CONFIG_JSON", required=True)
    args = parser.parse_args()
    _child(json.loads(args.child))
