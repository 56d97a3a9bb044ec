"""The stack's sidecar task, run here: its two containers' commands and environment (from
deploy/ecs/stack.yaml) as two processes, `recsys consume` and `recsys serve`, sharing localhost as
the containers of one Fargate task do. The API's one /metrics covers both, and every metric the
Prometheus rules and the Grafana dashboard (deploy/prometheus/) query is in it.

What the task would reach in AWS is replaced by the local stack: the database, the stream, the
delivery stream, the dead-letter bucket (all resource names the stack makes up), and the ports
(free ones instead of 8000 and 9101: other processes may hold those here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infra.aws import sync_client

from .conftest import free_port, until

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
TOKEN = "a-test-token-0123456789abcdef"
# PromQL words that are not metric names
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "le",
}  # fmt: skip
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every scrape target


def _stack_module() -> ModuleType:
    """tests/unit/deploy/conftest.py: the stack evaluated for parameter values, as CloudFormation would."""
    spec = importlib.util.spec_from_file_location("recsys_stack_eval", ROOT / "tests/unit/deploy/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("recsys_stack_eval", module)
    spec.loader.exec_module(module)
    return module


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges and grouping
    clauses removed; a name followed by "(" is a function)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?(ms|[smhdwy])?(?![A-Za-z0-9_:])", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue
        if text[max(0, match.start() - 2) : match.start()].endswith("$"):
            continue
        names.add(word)
    return names


def test_metric_names_finds_the_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{route="/x/{id}"}[5m]))) > 0.5 '
        "and on (instance) up == 1 unless b_total offset 5m / clamp_min(c, 1e-9)"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "up", "b_total", "c"}


def used_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used (alert names, dashboard panel titles)."""
    used: dict[str, set[str]] = {}
    for group in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(rule["alert"])
    board = json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            for name in metric_names(target["expr"].replace("$__rate_interval", "5m")):
                used.setdefault(name, set()).add(panel["title"])
    return used


def served_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition gives Prometheus, samples or not."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@contextmanager
def _container(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One container of the task: `recsys <command>` with the container's environment."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("recsys")), *command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_sidecar_task_serves_one_metrics_with_every_metric_the_rules_and_dashboard_use(
    model_db: str, tmp_path: Path
) -> None:
    stackmod = _stack_module()
    stack = stackmod.evaluate(
        {
            **stackmod.DEPLOYED,
            "DatabaseMode": "existing",
            "DatabaseUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:recsys/db-AbCdEf",
        }
    )
    boxes = {c["Name"]: c for c in stack.props("ServiceTaskDefinition")["ContainerDefinitions"]}
    tag = uuid.uuid4().hex[:8]
    from consumer.setup import ensure_delivery_stream, ensure_stream

    stream, delivery = f"task-{tag}", f"task-out-{tag}"
    ensure_stream(stream, 1)
    ensure_delivery_stream(delivery, f"s3://task-out-{tag}/records")
    api_port, metrics_port = free_port(), free_port()
    here = {  # what the task would reach in AWS, and the ports
        "RECSYS_DATABASE_URL": model_db,
        "RECSYS_API_TOKEN": TOKEN,
        "RECSYS_STREAM": stream,
        "RECSYS_DELIVERY_STREAM": delivery,
        "RECSYS_DEAD_LETTERS": f"s3://task-out-{tag}/dead-letters",
        "RECSYS_STATE_DIR": str(tmp_path),
        "RECSYS_HOST": "127.0.0.1",
        "RECSYS_PORT": str(api_port),
        "RECSYS_METRICS_PORT": str(metrics_port),
        # the test's pace, not the task's
        "RECSYS_CONSUMER__LEASE_TAKE_INTERVAL_S": "0.2",
        "RECSYS_CONSUMER__POLL_INTERVAL_S": "0.2",
        "RECSYS_CONSUMER__BATCH_MAX_WAIT_MS": "50",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    envs = {}
    for name, box in boxes.items():
        env = {e["Name"]: str(e["Value"]) for e in box["Environment"] if e["Name"] != "AWS_REGION"}
        secrets = {e["Name"] for e in box.get("Secrets", [])}
        assert secrets <= {"RECSYS_DATABASE_URL", "RECSYS_API_TOKEN"}, secrets
        if "RECSYS_API__CONSUMER_METRICS_URL" in env:
            # the sidecar reads the consumer container's metrics port on the task's localhost
            template_port = _env(boxes["consumer"])["RECSYS_METRICS_PORT"]
            assert env["RECSYS_API__CONSUMER_METRICS_URL"] == f"http://127.0.0.1:{template_port}/metrics"
            env["RECSYS_API__CONSUMER_METRICS_URL"] = f"http://127.0.0.1:{metrics_port}/metrics"
        env.update(
            {k: v for k, v in here.items() if k in env or k in secrets or k.startswith("RECSYS_CONSUMER__")}
        )
        envs[name] = {**base, **env}
    kinesis = sync_client("kinesis")
    customer = 100 + uuid.uuid4().int % 60  # a customer of the small model
    event = {
        "customer_number": customer,
        "city": "Nantes",
        "country": "France",
        "credit_limit": 21000.0,
        "browse_history": [{"product_code": "S10_1000", "quantity": 1, "in_shopping_cart": False}],
    }
    url = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ExitStack() as running, httpx.Client(timeout=5) as http:
        consumer = running.enter_context(
            _container(boxes["consumer"]["Command"], envs["consumer"], tmp_path / "consumer.log")
        )
        api = running.enter_context(_container(boxes["api"]["Command"], envs["api"], tmp_path / "api.log"))
        put = kinesis.put_record(
            StreamName=stream, PartitionKey=str(customer), Data=json.dumps(event).encode()
        )
        kinesis.put_record(StreamName=stream, PartitionKey="x", Data=b"{not json")
        event_id = f"{put['ShardId']}:{put['SequenceNumber']}"

        def streamed() -> dict[str, Any] | None:
            for proc, name in ((consumer, "consumer"), (api, "api")):
                assert proc.poll() is None, (
                    f"{name} exited: " + (tmp_path / f"{name}.log").read_text()[-2000:]
                )
            try:
                body: dict[str, Any] = http.get(f"{url}/recommendations/{customer}", headers=auth).json()
            except (httpx.HTTPError, ValueError):
                return None
            return body if body.get("event_id") == event_id else None

        assert until(streamed, 120, "the streamed answer from the API container")["source"] == "stream"

        def with_dead_letter() -> str | None:
            text = http.get(f"{url}/metrics").text
            return text if "recsys_consumer_records_dead_lettered_total{" in text else None

        exposition = until(with_dead_letter, 60, "the dead letter counted in the merged /metrics")
        assert http.get(f"{url}/readyz").status_code == 200
        served = served_names(exposition)
        assert "recsys_api_consumer_metrics_up 1.0" in exposition  # the consumer's part is in
        used = used_metrics()
        assert len(used) >= 12, used
        missing = {name: where for name, where in used.items() if name not in served | PROMETHEUS_OWN}
        assert missing == {}
        # both containers drain and exit 0 on SIGTERM, as ECS stops a task
        for proc in (api, consumer):
            proc.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0
        assert consumer.wait(timeout=60) == 0


def _env(box: dict[str, Any]) -> dict[str, str]:
    return {e["Name"]: str(e["Value"]) for e in box["Environment"]}


def test_a_metric_the_service_does_not_serve_would_be_caught() -> None:
    exposition = (
        "# HELP recsys_api_requests_total x\n# TYPE recsys_api_requests_total counter\n"
        'recsys_api_requests_total{route="/x"} 1.0\n'
    )
    served = served_names(exposition)
    assert "recsys_api_requests_total" in served
    assert "recsys_api_requests_totl" not in served
    assert metric_names("rate(recsys_api_requests_totl[5m])") - served == {"recsys_api_requests_totl"}


@pytest.mark.parametrize(
    "name", ["recsys_consumer_records_in_total", "recsys_api_request_duration_seconds_bucket"]
)
def test_the_rules_or_dashboard_use_the_main_series(name: str) -> None:
    assert name in used_metrics()
