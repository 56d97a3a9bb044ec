# ruff: noqa: T201  (a command-line script: it prints its steps)
"""The image, run as the ECS task definition runs it: the smoke test of `make image-test`.

    DOCKER=docker python -m deploy.image.smoke --image recsys:0.1.0

`deploy/image/build.sh test` runs it after building the image, with the engine it found or started.
Against the embedded stack on this machine (PostgreSQL + pgvector and a moto server, started with
`recsys stack up` from the checkout's venv), every container runs with the settings of the stack's
`recsys run` container (deploy/ecs/stack.yaml with TaskLayout=single; SERVICE_CONTAINER below): its
user (10001), its read-only root file system, its init process (`--init`), its environment and its
stopTimeout; and on the host's network, where 127.0.0.1 is the stack. Only the public contract is
used: the CLI's commands and flags, the HTTP routes, the records in S3, and Docker's own view of the
container (exit codes, health).

The steps: `recsys --version`; the installed distributions are exactly requirements.lock plus
recsys; the one-off jobs migrate, seed, etl, train, load-vectors; then `recsys run`: /readyz 200
with a model, the image's HEALTHCHECK turns healthy, every event `recsys produce` puts is delivered
(counted in S3 by event_id), GET /recommendations/{id} answers from the stream, /metrics has both
processes' metrics; `docker stop` (SIGTERM) drains and exits 0 within stopTimeout; a successor that
would wait longer than the whole test for an expired lease resumes every shard (so the leases were
released); a container killed with SIGKILL during a burst loses no event. The last line gives the
image's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from deploy.image._docker import GzippedSize, docker_command

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "recsys-smoke"
STREAM = "recsys-smoke-events"
DELIVERY = "recsys-smoke-recommendations"
DELIVERED = "delivered/"
SHARDS = 2
# A successor started with this lease duration takes an unreleased lease only after it: far longer
# than the whole wait for its deliveries (RELEASED_DEADLINE_S), so if it holds every shard within
# that wait, the stopped container released them.
NEVER_EXPIRES_S = 600
RELEASED_DEADLINE_S = 240

T = TypeVar("T")


class SmokeFailure(Exception):
    pass


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def wait_for(what: str, check: Callable[[], T | None], deadline_s: float, poll_s: float = 0.5) -> T:
    """Poll ``check()`` until it returns something other than None or False (a process becoming
    ready, not a timing claim); raise ``SmokeFailure`` once ``deadline_s`` has passed."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > end:
            raise SmokeFailure(f"{what}: not within {deadline_s:.0f} s")
        time.sleep(poll_s)


def canonical(name: str) -> str:
    """A distribution name as PEP 503 normalises it."""
    return "-".join(name.lower().replace("_", "-").replace(".", "-").split("-"))


def lock_pins(path: Path) -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def distinct_event_ids(lines: Sequence[str]) -> tuple[set[str], int]:
    """(distinct event ids, records) of newline-delimited recommendation records."""
    ids: set[str] = set()
    records = 0
    for line in lines:
        if line.strip():
            records += 1
            ids.add(json.loads(line)["event_id"])
    return ids, records


def prometheus_value(text: str, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- the container definition --------------------------------------------------------------------


# The stack's `recsys run` container (deploy/ecs/stack.yaml with TaskLayout=single), as far as a
# container here can follow it; tests/unit/deploy/test_deploy_image.py checks it against the stack.
# Of its environment, the values that name no AWS resource: the stream, the delivery stream, the
# buckets and the database are the embedded stack's here.
SERVICE_CONTAINER: dict[str, Any] = {
    "command": ["run"],
    "user": "10001:10001",
    "readonlyRootFilesystem": True,
    "linuxParameters": {"initProcessEnabled": True},
    "stopTimeout": 40,
    "environment": [
        {"name": "RECSYS_HOST", "value": "0.0.0.0"},  # noqa: S104 (the API listens on every interface, as in ECS)
        {"name": "RECSYS_LOG_FORMAT", "value": "json"},
        {"name": "RECSYS_LOG_LEVEL", "value": "INFO"},
        {"name": "RECSYS_STATE_DIR", "value": "/scratch/recsys"},
        {"name": "RECSYS_API__KEEP_ALIVE_TIMEOUT_S", "value": "75"},
        {"name": "RECSYS_CONSUMER__SHUTDOWN_DEADLINE_S", "value": "25"},
    ],
}
# what the stack's environment names that the smoke test takes from the embedded stack instead
REPLACED = {
    "AWS_REGION", "RECSYS_PORT", "RECSYS_DATABASE_URL", "RECSYS_STREAM", "RECSYS_DELIVERY_STREAM",
    "RECSYS_DEAD_LETTERS", "RECSYS_LAKE", "RECSYS_ARTIFACTS",
}  # fmt: skip


def run_options(container: Mapping[str, Any]) -> list[str]:
    """`docker run` options doing what a container definition asks (the network: the host's)."""
    options = ["--network", "host", "--user", container["user"]]
    if container.get("readonlyRootFilesystem"):
        options.append("--read-only")
    if container.get("linuxParameters", {}).get("initProcessEnabled"):
        options.append("--init")
    return options


@dataclass
class Docker:
    """The docker CLI, for one image run with one set of options and environment."""

    command: list[str]
    image: str
    options: list[str]
    env_file: Path
    stop_timeout_s: int
    created: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise SmokeFailure(
                f"docker {args[0]} exited {done.returncode}: {tail(done.stderr + done.stdout)}"
            )
        return done.stdout

    def job(self, *args: str) -> str:
        """A one-off container, as an ECS run-task: its output."""
        try:
            return self("run", "--rm", *self.options, "--env-file", str(self.env_file), self.image, *args)
        except SmokeFailure as exc:
            raise SmokeFailure(f"`recsys {' '.join(args)}` failed: {exc}") from exc

    def start(self, name: str, env: Mapping[str, str], *args: str) -> str:
        """A detached container (removed at the end, with its /scratch volume)."""
        settings = [f"--env={key}={value}" for key, value in env.items()]
        self.created.append(name)
        self("run", "--detach", "--name", name, *self.options, "--env-file", str(self.env_file),
             *settings, self.image, *args)  # fmt: skip
        return name

    def state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self("inspect", "--format", "{{json .State}}", name))
        return state

    def logs(self, name: str) -> str:
        done = subprocess.run(
            [*self.command, "logs", "--tail", "30", name], capture_output=True, text=True, check=False
        )
        return done.stdout + done.stderr

    def remove_created(self) -> None:
        for name in self.created:
            subprocess.run(
                [*self.command, "rm", "--force", "--volumes", name], capture_output=True, check=False
            )


# --- the stack -----------------------------------------------------------------------------------


@contextmanager
def embedded_stack(recsys: Path) -> Iterator[dict[str, str]]:
    """`recsys stack up` in a fresh folder, its `recsys stack env`; `recsys stack down --purge`."""
    with tempfile.TemporaryDirectory(prefix="recsys-smoke-") as state:
        flags = ["--state-dir", state]
        subprocess.run([recsys, "stack", "up", *flags], check=True, capture_output=True, timeout=300)
        try:
            exported = subprocess.run(
                [recsys, "stack", "env", *flags], check=True, capture_output=True, text=True
            ).stdout
            env: dict[str, str] = {}
            for line in exported.splitlines():
                words = shlex.split(line)
                if len(words) == 2 and words[0] == "export":
                    key, _, value = words[1].partition("=")
                    env[key] = value
            yield env
        finally:
            down = [str(recsys), "stack", "down", "--purge", *flags]
            subprocess.run(down, capture_output=True, timeout=120, check=False)


class Aws:
    """The stream, the delivery stream and the bucket, created as docs/operations.md does."""

    def __init__(self, env: Mapping[str, str]) -> None:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        endpoint = env["AWS_ENDPOINT_URL"]
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.kinesis = session.client("kinesis", endpoint_url=endpoint)
        self.firehose = session.client("firehose", endpoint_url=endpoint)

    def create(self) -> None:
        self.s3.create_bucket(Bucket=BUCKET)
        self.kinesis.create_stream(StreamName=STREAM, ShardCount=SHARDS)
        self.kinesis.get_waiter("stream_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 1})
        self.firehose.create_delivery_stream(
            DeliveryStreamName=DELIVERY,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/recsys-firehose",
                "BucketARN": f"arn:aws:s3:::{BUCKET}",
                "Prefix": DELIVERED,
                "ErrorOutputPrefix": f"{DELIVERED}errors/",
                "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 60},
                "CompressionFormat": "UNCOMPRESSED",
            },
        )

    def lines(self, prefix: str) -> list[str]:
        """Every line of every object under ``prefix`` (Firehose's error objects left out)."""
        found: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].startswith(f"{DELIVERED}errors/"):
                    body = self.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                    found.extend(body.decode().splitlines())
        return found

    def delivered(self) -> tuple[set[str], int]:
        """(distinct event ids, records) delivered so far."""
        return distinct_event_ids(self.lines(DELIVERED))


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET to the API on 127.0.0.1; (0, "") while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (http://127.0.0.1 only)
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the steps -----------------------------------------------------------------------------------


class Smoke:
    def __init__(self, docker: Docker, aws: Aws, port: int) -> None:
        self.docker = docker
        self.aws = aws
        self.port = port
        self.produced = 0
        self.model_version = ""
        self.api = f"http://127.0.0.1:{port}"

    def produce(self, count: int, *, seed: int, rate: float | None = None, detach: str | None = None) -> None:
        args = ["produce", "--count", str(count), "--seed", str(seed)]
        if rate:
            args += ["--rate", str(rate)]
        if detach:
            self.docker.start(detach, {}, *args)
        else:
            self.docker.job(*args)
        self.produced += count

    def all_delivered(self, deadline_s: float) -> tuple[set[str], int]:
        """Wait until every event put so far is in S3: as many distinct event ids as events."""

        def check() -> tuple[set[str], int] | None:
            ids, records = self.aws.delivered()
            return (ids, records) if len(ids) >= self.produced else None

        ids, records = wait_for(f"{self.produced} events delivered", check, deadline_s)
        if len(ids) != self.produced:
            raise SmokeFailure(f"{len(ids)} distinct event ids delivered for {self.produced} events put")
        return ids, records

    def service(self, name: str, lease_duration_s: float | None = None) -> str:
        """`recsys run` (the image's command) on the API port; /readyz 200 with a model."""
        env = {"RECSYS_PORT": str(self.port)}
        if lease_duration_s is not None:
            env["RECSYS_CONSUMER__LEASE_DURATION_S"] = str(lease_duration_s)
        self.docker.start(name, env, *SERVICE_CONTAINER["command"])

        def ready() -> dict[str, Any] | None:
            if not self.docker.state(name)["Running"]:
                raise SmokeFailure(f"{name} exited:\n{self.docker.logs(name)}")
            status, body = get(f"{self.api}/readyz")
            return json.loads(body) if status == 200 else None

        answer = wait_for(f"{name}: /readyz 200", ready, 180)
        if not answer.get("model_version"):
            raise SmokeFailure(f"/readyz answered 200 without a model: {answer}")
        self.model_version = str(answer["model_version"])
        return name

    def stop(self, name: str) -> float:
        """`docker stop` with the task definition's stopTimeout: SIGTERM, SIGKILL after it."""
        started = time.monotonic()
        timeout = self.docker.stop_timeout_s
        self.docker("stop", "--time", str(timeout), name, timeout=timeout + 60)
        took = time.monotonic() - started
        code = self.docker.state(name)["ExitCode"]
        if code != 0:
            raise SmokeFailure(
                f"{name} exited {code} on SIGTERM (137: killed after the {timeout} s stopTimeout):\n"
                f"{self.docker.logs(name)}"
            )
        return took

    def metrics(self) -> str:
        status, text = get(f"{self.api}/metrics")
        if status != 200:
            raise SmokeFailure(f"GET /metrics: {status}")
        return text


def check_image(docker: Docker, recsys: Path) -> None:
    version = docker.job("--version").strip()
    ours = subprocess.run([recsys, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if version != ours:
        raise SmokeFailure(f"the image says {version!r}, the checkout {ours!r}")
    say(f"recsys --version: {version}")

    listing = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    output = docker("run", "--rm", *docker.options, "--entrypoint", "/opt/venv/bin/python", docker.image,
                    "-c", listing)  # fmt: skip
    installed = {canonical(name): v for name, v in json.loads(output).items()}
    expected = {**lock_pins(ROOT / "requirements.lock"), "recsys": version.split()[-1]}
    if installed != expected:
        extra = sorted(set(installed.items()) - set(expected.items()))
        missing = sorted(set(expected.items()) - set(installed.items()))
        raise SmokeFailure(f"the image's distributions: {extra} not in requirements.lock, {missing} missing")
    say(f"installed distributions: exactly requirements.lock ({len(expected) - 1}) and recsys")


def check_service(docker: Docker, recsys: Path, container: Mapping[str, Any]) -> None:
    with embedded_stack(recsys) as stack_env:
        aws = Aws(stack_env)
        aws.create()
        env = {item["name"]: item["value"] for item in container["environment"]}
        env.update(
            stack_env,
            RECSYS_STREAM=STREAM,
            RECSYS_DELIVERY_STREAM=DELIVERY,
            RECSYS_LAKE=f"s3://{BUCKET}/lake",
            RECSYS_ARTIFACTS=f"s3://{BUCKET}/artifacts",
            RECSYS_DEAD_LETTERS=f"s3://{BUCKET}/dead-letters",
        )
        docker.env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        say(f"stack: PostgreSQL and moto on 127.0.0.1; {STREAM} ({SHARDS} shards) -> {DELIVERY} -> S3")

        for job in (["migrate"], ["seed"], ["etl"], ["train", "--epochs", "2"], ["load-vectors"]):
            last = tail(docker.job(*job), 1)
            say(f"recsys {' '.join(job)}: ok ({last[:120]})")

        smoke = Smoke(docker, aws, free_port())
        name = f"recsys-smoke-{os.getpid()}"
        first = smoke.service(f"{name}-1")
        say(f"recsys run: /readyz 200, model {smoke.model_version}")

        def healthy() -> bool:
            health: str | None = docker.state(first).get("Health", {}).get("Status")
            if health == "unhealthy":
                raise SmokeFailure(f"the health check failed:\n{docker.logs(first)}")
            return health == "healthy"

        wait_for("the image's HEALTHCHECK: healthy", healthy, 150, poll_s=1)
        say("docker: healthy")

        smoke.produce(200, seed=1)
        ids, records = smoke.all_delivered(180)
        say(f"recsys produce --count 200: {len(ids)} events delivered to S3 ({records} records)")
        if aws.lines("dead-letters/"):
            raise SmokeFailure("good events went to the dead letters")

        customer = json.loads(aws.lines(DELIVERED)[-1])["customer_number"]
        status, body = get(f"{smoke.api}/recommendations/{customer}")
        answer = json.loads(body) if status == 200 else {}
        if answer.get("source") != "stream" or answer.get("event_id") not in ids:
            raise SmokeFailure(f"GET /recommendations/{customer}: {status} {body[:300]}")
        say(f"GET /recommendations/{customer}: 200, source stream, {len(answer['recommended_items'])} items")

        metrics = smoke.metrics()
        out = prometheus_value(metrics, "recsys_consumer_records_out_total")
        if prometheus_value(metrics, "recsys_api_consumer_metrics_up") != 1 or not out:
            raise SmokeFailure(f"/metrics lacks the consumer process's metrics (records out: {out})")
        requests = sum(1 for line in metrics.splitlines() if line.startswith("recsys_api_requests_total{"))
        say(f"/metrics: the API process's ({requests} request series) and the consumer's ({out:.0f} out)")

        took = smoke.stop(first)
        say(f"docker stop: drained and exited 0 after {took:.1f} s (stopTimeout {docker.stop_timeout_s} s)")

        started = time.monotonic()
        second = smoke.service(f"{name}-2", lease_duration_s=NEVER_EXPIRES_S)
        smoke.produce(100, seed=2)
        smoke.all_delivered(RELEASED_DEADLINE_S - (time.monotonic() - started))

        def every_shard() -> bool:
            return prometheus_value(smoke.metrics(), "recsys_consumer_leases_held") == SHARDS

        wait_for(
            f"{second} holding {SHARDS} leases",
            every_shard,
            RELEASED_DEADLINE_S - (time.monotonic() - started),
        )
        say(
            f"a successor holds all {SHARDS} shards and delivered 100 more events "
            f"{time.monotonic() - started:.0f} s after its start; it would wait {NEVER_EXPIRES_S} s "
            "for a lease that was not released"
        )

        before = smoke.produced
        producer = f"{name}-producer"
        smoke.produce(300, seed=3, rate=50, detach=producer)
        wait_for("deliveries from the burst", lambda: len(aws.delivered()[0]) > before or None, 120)
        docker("kill", "--signal", "KILL", second)
        at_kill = len(aws.delivered()[0]) - before
        wait_for("the producer's end", lambda: docker.state(producer)["Running"] is False, 120)
        if docker.state(producer)["ExitCode"] != 0:
            raise SmokeFailure(f"recsys produce failed:\n{docker.logs(producer)}")
        smoke.service(f"{name}-3")
        ids, records = smoke.all_delivered(240)
        say(
            f"SIGKILL after {at_kill} of a 300-event burst were delivered: a new container delivered "
            f"all {len(ids)} events ({records - len(ids)} twice, with the same event_id)"
        )
        smoke.stop(f"{name}-3")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image.smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True, help="the image to test, e.g. recsys:0.1.0")
    parser.add_argument("--recsys", type=Path, default=ROOT / ".venv" / "bin" / "recsys",
                        help="the checkout's recsys, for the embedded stack")  # fmt: skip
    args = parser.parse_args(argv)
    # SIGTERM (build.sh's cleanup, a CI time limit) unwinds like an error: containers removed, stack down
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    container = SERVICE_CONTAINER
    size = GzippedSize(args.image)  # meanwhile
    with tempfile.TemporaryDirectory() as work:
        docker = Docker(
            command=docker_command(),
            image=args.image,
            options=run_options(container),
            env_file=Path(work) / "env",
            stop_timeout_s=int(container["stopTimeout"]),
        )
        docker.env_file.write_text("")
        try:
            check_image(docker, args.recsys)
            check_service(docker, args.recsys, container)
        except SmokeFailure as exc:
            size.cancel()
            say(f"FAILED: {exc}")
            return 1
        except BaseException:
            size.cancel()
            raise
        finally:
            docker.remove_created()
    say(size.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
