"""The image tools' pure parts: how the smoke test reads S3 records, metrics, the lock and the task
definition, and how the size report attributes packages. The tools themselves run an engine:
`make image-test` and `make image-sizes` (deploy/image/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `deploy` is not installed with recsys
    sys.path.insert(0, str(ROOT))

from deploy.image import sizes, smoke  # noqa: E402


def test_delivered_events_are_counted_by_event_id() -> None:
    records = [
        json.dumps({"event_id": "shardId-0:1", "customer_number": 103}),
        json.dumps({"event_id": "shardId-0:2", "customer_number": 112}),
        json.dumps({"event_id": "shardId-0:1", "customer_number": 103}),  # redelivered after a crash
        "",
    ]
    ids, count = smoke.distinct_event_ids(records)
    assert ids == {"shardId-0:1", "shardId-0:2"}
    assert count == 3


def test_an_unlabelled_prometheus_sample_is_read_and_a_labelled_one_is_not_taken_for_it() -> None:
    text = "\n".join(
        [
            "# HELP recsys_consumer_leases_held leases held",
            "# TYPE recsys_consumer_leases_held gauge",
            'recsys_consumer_leases_held_by{shard="a"} 7.0',
            "recsys_consumer_leases_held 2.0",
            'recsys_api_requests_total{route="/readyz"} 4.0',
        ]
    )
    assert smoke.prometheus_value(text, "recsys_consumer_leases_held") == 2.0
    assert smoke.prometheus_value(text, "recsys_api_requests_total") is None
    assert smoke.prometheus_value(text, "recsys_missing") is None


def test_the_lock_is_read_with_names_normalised_as_installed_distributions_report_them() -> None:
    pins = smoke.lock_pins(ROOT / "requirements.lock")
    assert pins["torch"].endswith("+cpu")
    raw = [line.split("==")[0] for line in (ROOT / "requirements.lock").read_text().split()]
    assert {smoke.canonical(name) for name in raw} == {canonicalize_name(name) for name in raw}
    assert set(pins) == {canonicalize_name(name) for name in raw}


def test_the_smoke_test_runs_containers_as_the_stack_runs_recsys_run(run_container: dict[str, Any]) -> None:
    container = smoke.SERVICE_CONTAINER
    for key in ("command", "user", "readonlyRootFilesystem", "linuxParameters", "stopTimeout"):
        assert container[key] == run_container[key], key
    stack_env = {item["name"]: item["value"] for item in run_container["environment"]}
    smoke_env = {item["name"]: item["value"] for item in container["environment"]}
    assert {name: stack_env.get(name) for name in smoke_env} == smoke_env
    assert set(stack_env) - set(smoke_env) <= smoke.REPLACED, "a setting the smoke test does not apply"


def test_docker_run_options_follow_the_container_definition() -> None:
    options = smoke.run_options(smoke.SERVICE_CONTAINER)
    assert options[:2] == ["--network", "host"]
    assert options[options.index("--user") + 1] == "10001:10001"
    assert "--read-only" in options and "--init" in options
    relaxed = {**smoke.SERVICE_CONTAINER, "readonlyRootFilesystem": False, "linuxParameters": {}}
    assert "--read-only" not in smoke.run_options(relaxed)
    assert "--init" not in smoke.run_options(relaxed)


def test_the_successor_could_not_take_an_unreleased_lease_during_its_wait() -> None:
    """The release check holds only if an expired-lease takeover is impossible within the wait."""
    from consumer.config import ConsumerSettings

    assert smoke.RELEASED_DEADLINE_S < smoke.NEVER_EXPIRES_S
    ConsumerSettings(lease_duration_s=smoke.NEVER_EXPIRES_S)  # within the setting's bounds


def _package(name: str, size: int, *requires: str) -> sizes.Package:
    return sizes.Package(name=name, version="1", bytes=size, requires=requires)


def test_needed_by_follows_requested_extras_and_markers() -> None:
    packages = [
        _package("recsys", 1, "psycopg[binary]>=3.2", "torch==2.13.0", "moto[server]; extra == 'local'"),
        _package("psycopg", 1, 'psycopg-binary==3.3.9; implementation_name != "pypy" and extra == "binary"'),
        _package("psycopg-binary", 1),
        _package("torch", 1, "sympy>=1.13", "optree>=0.13.0; extra == 'optree'"),
        _package("anyio", 1, 'exceptiongroup>=1.0.2; python_version < "3.11"'),
    ]
    by = sizes.needed_by(packages)
    assert by["psycopg-binary"] == ["psycopg"]
    assert by["psycopg"] == by["torch"] == ["recsys"]
    assert by["sympy"] == ["torch"]
    assert "optree" not in by and "moto" not in by and "exceptiongroup" not in by


def test_the_table_ranks_packages_and_adds_up_to_the_image() -> None:
    packages = [_package("numpy", 50_000_000), _package("torch", 500_000_000, "numpy"), _package("six", 1000)]
    lines = sizes.table(packages, "python:3.11-slim-bookworm", 100_000_000, 651_001_000, top=2)
    rows = [line.split(" | ") for line in lines[2:]]
    assert [row[0] for row in rows[:3]] == [
        "| base image `python:3.11-slim-bookworm`",
        "| torch 1",
        "| numpy 1",
    ]
    assert rows[1][1] == "500" and rows[1][2] == "77 %" and rows[1][4] == sizes.PURPOSE["torch"] + " |"
    assert rows[2][3] == "torch"
    assert rows[3][0] == "| 1 smaller packages" and rows[3][1] == "0.0"
    assert lines[-1].startswith("| **the image** | **651**")


def test_the_table_refuses_a_package_it_cannot_say_what_for() -> None:
    with pytest.raises(SystemExit, match="no purpose for left-pad"):
        sizes.table([_package("left-pad", 10)], "base", 1, 11, top=1)


def test_every_locked_package_says_what_it_is_for() -> None:
    locked = set(smoke.lock_pins(ROOT / "requirements.lock")) | {"recsys"}
    assert sorted(locked - set(sizes.PURPOSE)) == []
    assert sorted(set(sizes.PURPOSE) - locked) == [], "a purpose for a package the image no longer has"


def test_the_base_is_read_from_the_dockerfile() -> None:
    assert sizes.base_of((ROOT / "Dockerfile").read_text()) == "python:3.11-slim-bookworm"
    assert (
        sizes.base_of("ARG V=3.12\nFROM python:${V}-slim AS b\nFROM python:${V}-slim\n") == "python:3.12-slim"
    )
