"""Our batch path against the reference path built the way the original lab built it.

Reference ("lab"): one record at a time; for each, HTTP calls to a SEPARATE inference-server process
(FastAPI + uvicorn on 127.0.0.1, started by this benchmark: ``python -m bench.lab_reference --serve``)
exposing the lab's model-inference endpoints:

- ``POST /user_embeddings`` -- a fresh scikit-learn transform of the one record (fitted
  ``OneHotEncoder(handle_unknown="ignore")`` on city/country, fitted ``StandardScaler`` on the credit
  limit, both rebuilt from the active version's stored parameters) and the torch user tower;
- ``POST /items_from_user?limit=N`` -- one pgvector HNSW query (``<#>``, ``hnsw.ef_search`` 100, the
  value our recommender uses) on the active version's item table;
- ``GET /items_from_item?item_id=CODE&limit=N`` -- one pgvector query for the browsed item (the
  first in browse order: cart items first) -- the lab's record carries one ``similar_items`` list.

The server keeps one PostgreSQL connection and the client one keep-alive HTTP connection (kinder to
the reference than a connection per call). Ours: ``ModelRecommender.recommend_batch`` over the same
events in batches of 500 (the consumer's ``batch_max_records``), against the same embedded
PostgreSQL and the same loaded model version. A third path, ``recommend_one`` per event in
process, separates what batching buys from what dropping the HTTP hops buys.

Stage figures (``stage``): raw JSON bytes in -> output record serialised, no Kinesis or Firehose.
End-to-end figures (``e2e``, both paths): N events pre-put on a fresh 2-shard moto Kinesis stream,
until all N are delivered to moto Firehose -> S3. Ours is the real ``Consumer`` (leases and
checkpoints in PostgreSQL, Firehose batches, the latest-recommendations table); the lab's loop reads
each shard with GetRecords and does the HTTP calls and one Firehose ``PutRecord`` per record (the
lab's Lambda shape). Each e2e run includes the consumer's start-up (lease take, interval 0.3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench._harness import Figure, Prepared, Report, prepared_model, run_async

EF_SEARCH = 100
K = 10
BATCH_REPEATS = 10


# =============================================================================== the lab's server
def lab_app(database_url: str) -> Any:
    """The lab's model-inference endpoints as a FastAPI app (runs in its own process)."""
    import numpy as np
    import psycopg
    import torch
    from fastapi import FastAPI
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from model_store.model import ModelConfig, TwoTower, load_state_dict

    torch.set_num_threads(1)
    conn = psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    row = conn.execute(
        "SELECT item_table, user_features, model_config, weights FROM model_versions WHERE active"
    ).fetchone()
    if row is None:
        raise SystemExit("no active model version")
    item_table, features, config, weights = row
    conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
    model = TwoTower(ModelConfig.from_json(config))
    model.load_state_dict(load_state_dict(bytes(weights)))
    model.eval()
    cats = [list(c["categories"]) for c in features["categorical"]]
    encoder = OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False)
    encoder.fit(np.array([[c[0] for c in cats]], dtype=object))
    scaler = StandardScaler()
    scaler.mean_ = np.array([p["mean"] for p in features["numeric"]], dtype=np.float64)
    scaler.scale_ = np.array([p["scale"] for p in features["numeric"]], dtype=np.float64)
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = len(scaler.mean_)
    scaler.n_samples_seen_ = 1

    def norm(value: Any) -> str | None:
        text = str(value).strip().lower() if value is not None else ""
        return text or None

    app = FastAPI()

    @app.post("/user_embeddings")
    def user_embeddings(users: list[dict[str, Any]]) -> list[list[float]]:
        out = []
        for user in users:  # the lab: a fresh transform per record
            cat = encoder.transform(
                np.array([[norm(user.get("city")), norm(user.get("country"))]], dtype=object)
            )
            credit = user.get("creditlimit")
            num = scaler.transform(np.array([[scaler.mean_[0] if credit is None else float(credit)]]))
            x = torch.tensor(np.hstack([cat, num]), dtype=torch.float32)
            with torch.no_grad():
                out.append(model.user_tower(x)[0].tolist())
        return out

    @app.post("/items_from_user")
    def items_from_user(vector: list[float], limit: int = K) -> list[dict[str, Any]]:
        text = "[" + ",".join(repr(float(x)) for x in vector) + "]"
        rows = conn.execute(
            f"SELECT id, -(embedding <#> %s::vector) FROM {item_table} "
            "ORDER BY embedding <#> %s::vector LIMIT %s",
            (text, text, limit),
        ).fetchall()
        return [{"id": r[0], "score": float(r[1])} for r in rows]

    @app.get("/items_from_item")
    def items_from_item(item_id: str, limit: int = K) -> list[dict[str, Any]]:
        rows = conn.execute(
            f"""SELECT e.id, -(e.embedding <#> q.embedding) FROM {item_table} e,
                   (SELECT embedding FROM {item_table} WHERE id = %s) q
                WHERE e.id <> %s ORDER BY e.embedding <#> q.embedding LIMIT %s""",
            (item_id, item_id, limit),
        ).fetchall()
        return [{"id": r[0], "score": float(r[1])} for r in rows]

    return app


def _serve(port: int, database_url: str) -> None:
    import uvicorn

    uvicorn.run(lab_app(database_url), host="127.0.0.1", port=port, log_level="warning", access_log=False)


class LabServer:
    """The inference server as a child process on a free port; ``with LabServer(url) as base:``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "bench.lab_reference", "--serve", str(port), self.database_url]
        self.proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(__file__)))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the lab server exited with {self.proc.returncode}")
            try:
                httpx.get(f"{base}/items_from_item", params={"item_id": "x", "limit": 1}, timeout=1.0)
                return base
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the lab server did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# =============================================================================== the two paths
def make_events(prepared: Prepared, n: int, seed: int = 1) -> list[bytes]:
    from consumer.producer import make_event
    from etl.source import load_catalog

    catalog = load_catalog(prepared.source_url)
    rng = random.Random(seed)
    return [
        json.dumps(make_event(rng, rng.choice(catalog.customers), catalog.product_codes)).encode()
        for _ in range(n)
    ]


def _first_browsed(history: list[dict[str, Any]]) -> str:
    carts = [h for h in history if h.get("in_shopping_cart")]
    return str((carts or history)[0]["product_code"])


def lab_record(client: Any, data: bytes) -> dict[str, Any]:
    """One record the lab's way: three HTTP calls, then the output record."""
    event = json.loads(data)
    history = event["browse_history"]
    user = {
        "city": event.get("city"),
        "country": event.get("country"),
        "creditlimit": event.get("credit_limit"),
    }
    vector = client.post("/user_embeddings", json=[user]).json()[0]
    browsed = {h["product_code"] for h in history}
    found = client.post("/items_from_user", params={"limit": K + len(browsed)}, json=vector).json()
    recommended = [f for f in found if f["id"] not in browsed][:K]
    code = _first_browsed(history)
    similar = client.get("/items_from_item", params={"item_id": code, "limit": K}).json()
    return {
        **event,
        "recommended_items": recommended,
        "similar_items": {"product_code": code, "similar_items": similar},
    }


def run_lab(base: str, events: Sequence[bytes]) -> tuple[float, list[dict[str, Any]]]:
    import httpx

    with httpx.Client(base_url=base, timeout=10.0) as client:
        lab_record(client, events[0])  # warm-up
        started = time.perf_counter()
        out = [lab_record(client, e) for e in events]
        for record in out:
            json.dumps(record)
        return time.perf_counter() - started, out


def _output(event: Any, rec: Any) -> dict[str, Any]:
    return {
        **event.raw,
        "recommended_items": [{"id": i.id, "score": i.score} for i in rec.recommended_items],
        "similar_items": {
            "product_code": rec.similar_items.product_code,
            "similar_items": [{"id": i.id, "score": i.score} for i in rec.similar_items.similar_items],
        },
        "model_version": rec.model_version,
    }


async def run_ours(
    database_url: str, events: Sequence[bytes], batch: int, runs: int, before_each: Callable[[], None]
) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    """(batch-path seconds per run, one-by-one seconds per run, the batch path's records).

    ``before_each`` (the lab run) is called before each run, so the i-th runs of the three paths
    are neighbours in time and a burst of load from elsewhere hits one ratio, not one path."""
    from core.events import parse_event
    from core.recommendations import RecommendRequest
    from infra.pg import create_pool
    from model_store.recommender import ModelRecommender

    pool = await create_pool(database_url, min_size=1, max_size=4)
    rec = await ModelRecommender.open(pool, ef_search=EF_SEARCH)  # the lab server's width: like for like
    try:

        async def batch_path() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for start in range(0, len(events), batch):
                parsed = [parse_event(e) for e in events[start : start + batch]]
                reqs = [RecommendRequest(p.customer_number, p.features, p.browse_history, K) for p in parsed]
                answers = await rec.recommend_batch(reqs)
                out.extend(_output(p, a) for p, a in zip(parsed, answers, strict=True))
            for record in out:
                json.dumps(record)
            return out

        async def one_by_one() -> None:
            for e in events:
                p = parse_event(e)
                a = await rec.recommend_one(
                    RecommendRequest(p.customer_number, p.features, p.browse_history, K)
                )
                json.dumps(_output(p, a))

        await batch_path()  # warm-up
        batch_s, one_s = [], []
        records: list[dict[str, Any]] = []
        for _ in range(runs):
            before_each()
            t0 = time.perf_counter()
            for _ in range(BATCH_REPEATS):  # ~0.1 s a pass: repeated so one scheduler hiccup is diluted
                records = await batch_path()
            batch_s.append((time.perf_counter() - t0) / BATCH_REPEATS)
            t0 = time.perf_counter()
            await one_by_one()
            one_s.append(time.perf_counter() - t0)
        return batch_s, one_s, records
    finally:
        await rec.close()
        await pool.close()


def agreement(lab: Sequence[dict[str, Any]], ours: Sequence[dict[str, Any]]) -> float:
    """Mean overlap of the two paths' recommended top-10 sets (1.0 = the same items)."""
    total = 0.0
    for a, b in zip(lab, ours, strict=True):
        x = {i["id"] for i in a["recommended_items"]}
        y = {i["id"] for i in b["recommended_items"]}
        total += len(x & y) / max(1, len(x | y))
    return total / max(1, len(lab))


# =============================================================================== end to end
_CREATED: list[tuple[str, str]] = []


def fresh_streams(shards: int) -> tuple[str, str, str]:
    """A new Kinesis stream, Firehose delivery stream and bucket name; :func:`drop_fresh_streams`
    deletes the streams (moto allows 50 delivery streams per account, a full bench run makes ~35)."""
    from consumer.setup import ensure_delivery_stream, ensure_stream

    tag = uuid.uuid4().hex[:8]
    stream, delivery, bucket = f"bench-{tag}", f"bench-recs-{tag}", f"bench-{tag}"
    ensure_stream(stream, shards)
    ensure_delivery_stream(delivery, f"s3://{bucket}/out")
    _CREATED.append((stream, delivery))
    return stream, delivery, bucket


def drop_fresh_streams() -> None:
    """Delete the streams this process made with :func:`fresh_streams` (their S3 output stays)."""
    from infra.aws import sync_client

    if not _CREATED:
        return
    kinesis, firehose = sync_client("kinesis"), sync_client("firehose")
    while _CREATED:
        stream, delivery = _CREATED.pop()
        firehose.delete_delivery_stream(DeliveryStreamName=delivery, AllowForceDelete=True)
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def put_events(stream: str, events: Sequence[bytes]) -> list[str]:
    from infra.aws import sync_client

    client = sync_client("kinesis")
    ids: list[str] = []
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        resp = client.put_records(
            StreamName=stream,
            Records=[{"PartitionKey": str(json.loads(e)["customer_number"]), "Data": e} for e in chunk],
        )
        if resp["FailedRecordCount"]:
            raise RuntimeError("moto refused records")
        ids.extend(f"{r['ShardId']}:{r['SequenceNumber']}" for r in resp["Records"])
    return ids


def consumer_settings(stream: str, delivery: str, bucket: str, **consumer: Any) -> Any:
    from recsys.settings import ConsumerSettings, Settings

    cfg: dict[str, Any] = {
        "lease_duration_s": 6.0,
        "lease_renew_interval_s": 2.0,
        "lease_take_interval_s": 0.3,
        "poll_interval_s": 0.2,
    }
    cfg.update(consumer)
    return Settings(
        stream=stream,
        delivery_stream=delivery,
        dead_letters=f"s3://{bucket}/dead",
        initial_position="TRIM_HORIZON",
        consumer=ConsumerSettings(**cfg),
    )


async def consume_all(database_url: str, settings: Any, count: int, timeout_s: float = 600) -> float:
    """Run our Consumer until ``count`` records are delivered; seconds from start to that moment."""
    from infra.pg import create_pool
    from recsys import runtime

    pool = await create_pool(database_url, min_size=2, max_size=10)
    stop = asyncio.Event()
    try:
        # the wiring of `recsys consume` (the active model with its cache and metrics) on this pool
        async with runtime.consumer(settings, pool=pool, suppression=None) as consumer:
            started = time.perf_counter()
            task = asyncio.create_task(consumer.run(stop), name="bench-consumer")
            try:
                while consumer.stats.delivered < count:
                    if task.done():
                        task.result()
                        raise RuntimeError("the consumer stopped early")
                    if time.perf_counter() - started > timeout_s:
                        raise RuntimeError(
                            f"only {consumer.stats.delivered}/{count} delivered in {timeout_s}s"
                        )
                    await asyncio.sleep(0.02)
                return time.perf_counter() - started
            finally:
                stop.set()
                await task
    finally:
        stop.set()
        await pool.close()


STAGES = ("decode", "recommend", "firehose", "latest", "checkpoint", "batch")


def stage_totals() -> dict[str, float]:
    """Seconds spent so far in each of the consumer's processing stages (its Prometheus histogram)."""
    from prometheus_client import REGISTRY

    return {
        s: REGISTRY.get_sample_value("recsys_consumer_stage_seconds_sum", {"stage": s}) or 0.0 for s in STAGES
    }


def lab_consume(base: str, stream: str, delivery: str, count: int) -> float:
    """The lab's loop: GetRecords per shard, per record three HTTP calls and one Firehose PutRecord."""
    import httpx

    from infra.aws import sync_client

    kinesis, firehose = sync_client("kinesis"), sync_client("firehose")
    started = time.perf_counter()
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]]
    done = 0
    with httpx.Client(base_url=base, timeout=10.0) as client:
        for shard in shards:
            it = kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                page = kinesis.get_records(ShardIterator=it, Limit=100)
                for record in page["Records"]:
                    out = lab_record(client, record["Data"])
                    firehose.put_record(
                        DeliveryStreamName=delivery, Record={"Data": json.dumps(out).encode() + b"\n"}
                    )
                    done += 1
                if not page["Records"]:  # the stream was filled before: an empty page is its end
                    break
                it = page.get("NextShardIterator")
    if done != count:
        raise RuntimeError(f"the lab loop processed {done} of {count}")
    return time.perf_counter() - started


# =============================================================================== main
def main(quick: bool) -> None:
    from infra.logs import configure_logging

    configure_logging("WARNING")
    n = 500 if quick else 2000
    runs = 5
    e2e_n = 1000 if quick else 3000
    e2e_runs = 1 if quick else 3
    prepared = prepared_model(1.0)
    events = make_events(prepared, max(n, e2e_n))
    report = Report(
        "lab_reference",
        scale={
            "events": n,
            "runs": runs,
            "e2e_events": e2e_n,
            "e2e_runs": e2e_runs,
            "batch": 500,
            "model_version": prepared.version,
            "shop_scale": prepared.scale,
        },
    )
    with LabServer(prepared.database_url) as base:
        lab_s: list[float] = []
        lab_out: list[dict[str, Any]] = []

        def lab_run() -> None:
            nonlocal lab_out
            seconds, lab_out = run_lab(base, events[:n])
            lab_s.append(seconds)

        batch_s, one_s, ours_out = run_async(run_ours(prepared.database_url, events[:n], 500, runs, lab_run))
        lab = report.add(Figure("stage: lab reference", "events/s", [n / s for s in lab_s]))
        one = report.add(Figure("stage: ours one-by-one", "events/s", [n / s for s in one_s]))
        ours = report.add(Figure("stage: ours batch", "events/s", [n / s for s in batch_s]))
        report.ratio("stage: batch / lab", ours, lab, note="headline: recommendation stage")
        report.ratio("stage: one-by-one / lab", one, lab, note="what dropping the HTTP hops buys")
        report.ratio("stage: batch / one-by-one", ours, one, note="what batching buys")
        report.add(Figure("top-10 agreement (Jaccard)", "", [agreement(lab_out, ours_out)]))

        lab_e2e, ours_e2e = [], []
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        for _ in range(e2e_runs):
            stream, delivery, bucket = fresh_streams(2)
            put_events(stream, events[:e2e_n])
            lab_e2e.append(e2e_n / lab_consume(base, stream, delivery, e2e_n))
            stream, delivery, bucket = fresh_streams(2)
            put_events(stream, events[:e2e_n])
            settings = consumer_settings(stream, delivery, bucket)
            before = stage_totals()
            seconds = run_async(consume_all(prepared.database_url, settings, e2e_n))
            after = stage_totals()
            ours_e2e.append(e2e_n / seconds)
            for stage in STAGES:
                stages[stage].append(1000 * (after[stage] - before[stage]) / e2e_n)
        le = report.add(
            Figure("e2e: lab loop", "events/s", lab_e2e, note="moto Kinesis -> ... -> moto Firehose")
        )
        oe = report.add(
            Figure("e2e: ours Consumer", "events/s", ours_e2e, note="incl. start-up and lease take")
        )
        report.ratio("e2e: ours / lab", oe, le, note="headline: consumer end to end")
        for stage, values in stages.items():
            note = "summed over shards, which overlap: not wall time" if stage == "batch" else ""
            report.add(Figure(f"e2e ours: {stage}", "ms/event", values, note=note))
    report.print()
    print(f"  wrote {report.write()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATABASE_URL"))
    args = parser.parse_args()
    if args.serve:
        _serve(int(args.serve[0]), args.serve[1])
    else:
        main(quick=True)
