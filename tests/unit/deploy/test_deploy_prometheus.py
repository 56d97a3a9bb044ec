"""deploy/prometheus: the alert rules pass their promtool tests, the scrape configuration and every
dashboard query are valid PromQL for Prometheus, and the alerts cover what the CloudWatch alarms do.

promtool comes from Debian's prometheus package (`make install-dev` unpacks it into .cache); the
tests skip with that reason where it is not there. That every metric the rules and the dashboard
name is really served is checked against a running task's /metrics in
tests/integration/service/test_task_metrics.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = Path(os.environ.get("PROMTOOL", str(ROOT / ".cache" / "prometheus" / "usr" / "bin" / "promtool")))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")
    if tool is None:
        pytest.skip(
            "promtool is not installed: `make install-dev` unpacks Debian's prometheus package into .cache"
        )
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=PROMETHEUS
    )


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_queries() -> list[str]:
    board = json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def test_the_rules_pass_their_promtool_tests() -> None:
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert fired == set(alerts()) == quiet


def test_a_broken_rule_fails_its_promtool_test(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(
        (PROMETHEUS / "rules.yml").read_text().replace("> 300000", "> 500000")
    )
    (tmp_path / "rules.test.yml").write_text((PROMETHEUS / "rules.test.yml").read_text())
    tool = str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed")
    done = subprocess.run(
        [tool, "test", "rules", "rules.test.yml"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode != 0 and "RecsysConsumerLagHigh" in done.stdout + done.stderr


def test_the_alerts_cover_what_the_issue_and_the_alarms_name() -> None:
    names = set(alerts())
    assert names >= {
        "RecsysConsumerLagHigh",  # consumer lag per shard
        "RecsysDeadLetterRateHigh",
        "RecsysDeliveryFailing",
        "RecsysApi5xx",
        "RecsysApiLatencyP99",
        "RecsysNoModelLoaded",
        "RecsysLeaseChurn",
        "RecsysConsumerMetricsMissing",  # the sidecar's own health
    }
    assert "shard_id" in alerts()["RecsysConsumerLagHigh"]["expr"]
    for rule in alerts().values():
        assert rule["labels"]["severity"] in {"page", "ticket"} and rule["annotations"]["summary"]


def test_the_scrape_config_is_valid_and_finds_the_tasks_the_stack_registers(template: dict[str, Any]) -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (dns,) = job["dns_sd_configs"]
    service = template["Resources"]["DiscoveryService"]["Properties"]
    domain = template["Parameters"]["ServiceDiscoveryDomain"]["Default"]
    assert dns["names"] == [f"{service['Name']}.{domain}"] and dns["type"] == "A"
    assert str(dns["port"]) == template["Mappings"]["App"]["Ports"]["Api"]
    assert job["metrics_path"] == "/metrics" and job["job_name"] == "recsys"
    assert 'job="recsys"' in alerts()["RecsysNoModelLoaded"]["expr"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    # promtool parses PromQL where it checks rules: one recording rule per query
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": q.replace("$__rate_interval", "5m")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(tmp_path / "dashboard-rules.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "broken.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert promtool("check", "rules", str(tmp_path / "broken.yml")).returncode != 0
