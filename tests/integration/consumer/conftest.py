"""Fixtures of the consumer's integration tests: streams on the moto server, the consumer as
``recsys.runtime`` wires it (with a fake recommender from ``recsys.testing``), helpers to read what
Firehose delivered and to wait on a condition with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consumer.app import Consumer
from consumer.setup import ensure_delivery_stream, ensure_stream, wait_stream_active
from infra.aws import sync_client
from infra.pg import create_pool
from recsys import runtime
from recsys.settings import ConsumerSettings, Settings
from recsys.stack import StackInfo
from recsys.testing import FakeRecommender


@dataclass
class Env:
    """One test's stream, delivery stream, buckets and settings."""

    stream: str
    delivery: str
    bucket: str
    settings: Settings
    database_url: str
    recommender: FakeRecommender = field(default_factory=FakeRecommender)

    def kinesis(self) -> Any:
        return sync_client("kinesis")

    def process_environ(
        self, state_dir: Path, *, database_url: str | None = None, **consumer: Any
    ) -> dict[str, str]:
        """The environment of a `recsys consume`-like child process on this stream: this process's
        environment, the stream, delivery and dead letters, and ``RECSYS_CONSUMER__<NAME>`` for each
        of ``consumer``."""
        environ = dict(os.environ)
        environ.update(
            {
                "RECSYS_DATABASE_URL": database_url or self.database_url,
                "RECSYS_STATE_DIR": str(state_dir),
                "RECSYS_STREAM": self.stream,
                "RECSYS_DELIVERY_STREAM": self.delivery,
                "RECSYS_DEAD_LETTERS": f"s3://{self.bucket}/dead",
                **{f"RECSYS_CONSUMER__{name.upper()}": str(value) for name, value in consumer.items()},
            }
        )
        return environ

    def outputs(self) -> list[dict[str, Any]]:
        """Every record Firehose delivered (duplicates included), in no particular order."""
        s3 = sync_client("s3")
        out: list[dict[str, Any]] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="out/"):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                assert body.endswith(b"\n"), "every Firehose record ends with a newline"
                out.extend(json.loads(line) for line in body.splitlines() if line.strip())
        return out

    def dead_letters(self) -> list[dict[str, Any]]:
        s3 = sync_client("s3")
        out: list[dict[str, Any]] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="dead/"):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                for line in body.splitlines():
                    letter = json.loads(line)
                    letter["data"] = base64.b64decode(letter["data_base64"])
                    out.append(letter)
        return out

    def put(self, payloads: Sequence[bytes], key: Callable[[int], str] = str) -> list[str]:
        """Put raw records one call per 500; return their event ids."""
        ids: list[str] = []
        client = self.kinesis()
        for start in range(0, len(payloads), 500):
            chunk = payloads[start : start + 500]
            resp = client.put_records(
                StreamName=self.stream,
                Records=[{"PartitionKey": key(start + i), "Data": p} for i, p in enumerate(chunk)],
            )
            assert resp["FailedRecordCount"] == 0
            ids.extend(f"{r['ShardId']}:{r['SequenceNumber']}" for r in resp["Records"])
        return ids


def consumer_settings(**overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "lease_duration_s": 3.0,
        "lease_renew_interval_s": 0.5,
        "lease_take_interval_s": 0.3,
        "poll_interval_s": 0.2,
        "shutdown_deadline_s": 20.0,
        "aws_call_timeout_s": 5.0,
    }
    base.update(overrides)
    return ConsumerSettings(**base)


@pytest.fixture
def make_env(stack: StackInfo, database_url: str, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    """Fresh streams per test, deleted afterwards (moto allows 50 delivery streams per account)."""
    made: list[Env] = []

    def make(
        shards: int = 2, initial_position: str = "TRIM_HORIZON", *, on_demand: bool = False, **consumer: Any
    ) -> Env:
        """``on_demand``: an ON_DEMAND stream (the service picks its shards; ``shards`` is unused)."""
        tag = uuid.uuid4().hex[:10]
        bucket = f"consumer-{tag}"
        stream = f"events-{tag}"
        delivery = f"recs-{tag}"
        if on_demand:
            kinesis = sync_client("kinesis")
            kinesis.create_stream(StreamName=stream, StreamModeDetails={"StreamMode": "ON_DEMAND"})
            wait_stream_active(kinesis, stream)
        else:
            ensure_stream(stream, shards)
        ensure_delivery_stream(delivery, f"s3://{bucket}/out")
        settings = Settings(
            state_dir=tmp_path,
            stream=stream,
            delivery_stream=delivery,
            dead_letters=f"s3://{bucket}/dead",
            initial_position=initial_position,
            consumer=consumer_settings(**consumer),
        )
        env = Env(stream, delivery, bucket, settings, database_url)
        made.append(env)
        return env

    yield make
    for env in made:
        with contextlib.suppress(Exception):
            sync_client("firehose").delete_delivery_stream(
                DeliveryStreamName=env.delivery, AllowForceDelete=True
            )
        with contextlib.suppress(Exception):
            sync_client("kinesis").delete_stream(StreamName=env.stream, EnforceConsumerDeletion=True)


class Helpers:
    """What the test modules use (handed out by the ``h`` fixture, so no test imports a conftest)."""

    Env = Env
    FakeRecommender = FakeRecommender

    @staticmethod
    def consumer(env: Env, pool: asyncpg.Pool[Any], **kwargs: Any) -> AbstractAsyncContextManager[Consumer]:
        """``async with h.consumer(env, pool) as consumer``: the runtime's consumer on ``env``."""
        return new_consumer(env, pool, **kwargs)

    @staticmethod
    async def wait_for(
        condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 60.0, what: str = "condition"
    ) -> None:
        await wait_for(condition, timeout_s, what)

    @staticmethod
    def event(customer: int, n: int = 0) -> dict[str, Any]:
        return event(customer, n)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers


@pytest.fixture(scope="session")
async def model_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database of its own with a small trained model loaded (60 customers, 50 products)."""
    from infra.pg import new_database
    from model_store.artifacts import export_trained
    from model_store.loader import load_vectors
    from model_store.testing import synthetic_ratings
    from model_store.training import fit
    from recsys.settings import TrainSettings

    root = tmp_path_factory.mktemp("consumer-artifacts")
    table = synthetic_ratings(n_customers=60, n_products=50, ratings_per_customer=20, seed=5)
    version = await asyncio.to_thread(export_trained, str(root), fit(table, TrainSettings(seed=1, epochs=4)))
    url = await new_database(database_url, "consumer_model")
    await load_vectors(url, str(root), version)
    return url


@pytest.fixture
async def pool(database_url: str) -> Any:
    p = await create_pool(database_url, min_size=1, max_size=8)
    try:
        yield p
    finally:
        await p.close()


def new_consumer(env: Env, pool: asyncpg.Pool[Any], **kwargs: Any) -> AbstractAsyncContextManager[Consumer]:
    """The consumer ``recsys consume`` runs, on the test's pool, with ``env``'s fake recommender and
    no suppression list unless given; ``kwargs`` replace adapters (``recsys.runtime.consumer``)."""
    kwargs.setdefault("recommender", env.recommender)
    kwargs.setdefault("suppression", None)
    return runtime.consumer(env.settings, pool=pool, **kwargs)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (a deadline, not a timing claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def event(customer: int, n: int = 0) -> dict[str, Any]:
    return {
        "session_id": f"s{customer}-{n}",
        "customer_number": customer,
        "city": "Nantes",
        "country": "France",
        "credit_limit": 21000.0,
        "browse_history": [
            {"product_code": f"S10_{1000 + n % 50}", "quantity": 2, "in_shopping_cart": True},
            {"product_code": "S18_2238", "quantity": "1", "in_shopping_cart": False},
        ],
    }


KINESIS_MOCK_VERSION = "0.6.2"
REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kinesis_mock_main() -> Path | None:
    """kinesis-mock's main.js under ``$RECSYS_KINESIS_MOCK_DIR`` or ``.cache/kinesis-local``."""
    base = Path(os.environ.get("RECSYS_KINESIS_MOCK_DIR", REPO / ".cache" / "kinesis-local"))
    for candidate in (base / "main.js", base / "node_modules" / "kinesis-local" / "main.js"):
        if candidate.is_file():
            return candidate
    npm = shutil.which("npm")
    if npm is None:
        return None
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(base),
            f"kinesis-local@{KINESIS_MOCK_VERSION}",
        ],
        check=False,
        timeout=180,
        capture_output=True,
    )
    main = base / "node_modules" / "kinesis-local" / "main.js"
    return main if main.is_file() else None


@pytest.fixture(scope="session")
def kinesis_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """kinesis-mock (npm ``kinesis-local``) on plain HTTP: right about resharding and ChildShards."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the resharding tests need kinesis-mock (npm kinesis-local)")
    main = _kinesis_mock_main()
    if main is None:
        pytest.skip("kinesis-mock is not installed and npm could not fetch it (run `make install-dev`)")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "KINESIS_MOCK_PLAIN_PORT": str(port),
            "KINESIS_MOCK_TLS_PORT": str(_free_port()),
            "CREATE_STREAM_DURATION": "50ms",
            "SPLIT_SHARD_DURATION": "50ms",
            "MERGE_SHARDS_DURATION": "50ms",
            "UPDATE_SHARD_COUNT_DURATION": "50ms",
            "LOG_LEVEL": "WARN",
        }
    )
    log_path = tmp_path_factory.mktemp("kinesis-mock") / "kinesis-mock.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([node, str(main)], cwd=main.parent, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kinesis-mock did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
