"""The task, service and autoscaling definitions agree with the code they run.

The environment of each task definition is read by the real ``Settings`` class, the one-off commands
are parsed by the real ``recsys`` parser, and the drain deadline is compared with the stop timeout.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest

from recsys.settings import Settings

FAKE_SECRETS = {
    "RECSYS_DATABASE_URL": "postgresql://recsys:secret@db.internal:5432/recsys",
    "RECSYS_API_TOKEN": "a-real-looking-token-0123456789",
    "RECSYS_SOURCE_URL": "mysql+pymysql://reader:secret@shop.internal:3306/classicmodels",
}


def container(document: dict[str, Any]) -> dict[str, Any]:
    containers = document["containerDefinitions"]
    assert len(containers) == 1
    return dict(containers[0])


def environment(document: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(document)["environment"]}


def secrets(document: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["valueFrom"] for item in container(document)["secrets"]}


def settings_in_container(document: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the process in the container builds them: its environment plus its secrets."""
    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)
    for name, value in environment(document).items():
        monkeypatch.setenv(name, value)
    for name in secrets(document):
        monkeypatch.setenv(name, FAKE_SECRETS[name])
    return Settings()


@pytest.mark.parametrize("path", ["task-definition.json", "task-definition-jobs.json"])
def test_fargate_basics(rendered: dict[str, Any], path: str) -> None:
    task = rendered[path]
    assert task["networkMode"] == "awsvpc"
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["runtimePlatform"]["cpuArchitecture"] == "X86_64"  # the lock pins x86-64 CPU torch
    box = container(task)
    assert box["essential"] is True
    assert box["linuxParameters"]["initProcessEnabled"] is True  # signals forwarded, zombies reaped
    assert box["readonlyRootFilesystem"] is True
    (scratch,) = box["mountPoints"]  # the only writable path (see the Dockerfile's VOLUME)
    assert scratch["containerPath"] == "/scratch" and scratch["readOnly"] is False
    assert [v["name"] for v in task["volumes"]] == [scratch["sourceVolume"]]
    assert environment(task)["RECSYS_STATE_DIR"].startswith("/scratch/")
    assert box["user"].split(":")[0] not in ("0", "root")
    logs = box["logConfiguration"]
    assert logs["logDriver"] == "awslogs"
    assert set(logs["options"]) >= {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"}
    for value in environment(task).values():
        assert "secret" not in value.lower() and "password" not in value.lower()


def test_service_environment_is_read_by_the_settings(
    rendered: dict[str, Any], example_vars: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in_container(rendered["task-definition.json"], monkeypatch)
    assert settings.host == "0.0.0.0"  # the load balancer reaches the task on its own address
    assert settings.port == container(rendered["task-definition.json"])["portMappings"][0]["containerPort"]
    assert settings.log_format == "json"
    assert settings.stream == "recsys-browsing-events"
    assert settings.delivery_stream == "recsys-recommendations"
    assert settings.artifacts == f"s3://{example_vars['ARTIFACTS_BUCKET']}/artifacts"
    assert settings.lake == f"s3://{example_vars['LAKE_BUCKET']}/lake"
    assert settings.dead_letters == f"s3://{example_vars['DEAD_LETTERS_BUCKET']}/dead-letters"
    assert settings.database_url is not None
    assert settings.api_token is not None


def test_service_secrets_come_from_the_secret_store(
    rendered: dict[str, Any], example_vars: dict[str, Any]
) -> None:
    assert secrets(rendered["task-definition.json"]) == {
        "RECSYS_DATABASE_URL": example_vars["DATABASE_URL_SECRET_ARN"],
        "RECSYS_API_TOKEN": example_vars["API_TOKEN_SECRET_ARN"],
    }
    assert secrets(rendered["task-definition-jobs.json"]) == {
        "RECSYS_DATABASE_URL": example_vars["DATABASE_URL_SECRET_ARN"],
        "RECSYS_SOURCE_URL": example_vars["SOURCE_URL_SECRET_ARN"],
    }
    for path in ("task-definition.json", "task-definition-jobs.json"):
        assert not set(environment(rendered[path])) & set(secrets(rendered[path]))


def test_stop_timeout_leaves_room_for_the_consumer_drain(
    rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = rendered["task-definition.json"]
    settings = settings_in_container(task, monkeypatch)
    stop_timeout = container(task)["stopTimeout"]
    assert (
        settings.consumer.shutdown_deadline_s == Settings.model_fields["consumer"].default.shutdown_deadline_s
    )
    # the drain must end, and the process exit, before ECS sends SIGKILL
    assert stop_timeout >= settings.consumer.shutdown_deadline_s + 5
    assert stop_timeout <= 120  # the Fargate maximum


def test_the_service_routes_the_load_balancer_to_the_api_port(rendered: dict[str, Any]) -> None:
    task, service = rendered["task-definition.json"], rendered["service.json"]
    port = container(task)["portMappings"][0]["containerPort"]
    (balancer,) = service["loadBalancers"]
    assert balancer["containerName"] == container(task)["name"]
    assert balancer["containerPort"] == port
    assert service["taskDefinition"] == task["family"]
    assert service["launchType"] == "FARGATE"
    assert service["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    breaker = service["deploymentConfiguration"]["deploymentCircuitBreaker"]
    assert breaker == {"enable": True, "rollback": True}
    assert service["healthCheckGracePeriodSeconds"] >= container(task)["healthCheck"]["startPeriod"]


def test_autoscaling_targets_the_service_on_cpu_and_consumer_lag(rendered: dict[str, Any]) -> None:
    service = rendered["service.json"]
    resource = f"service/{service['cluster']}/{service['serviceName']}"
    target = rendered["autoscaling/scalable-target.json"]
    assert target["ResourceId"] == resource
    assert 1 <= target["MinCapacity"] <= service["desiredCount"] <= target["MaxCapacity"]
    cpu = rendered["autoscaling/policy-cpu.json"]
    lag = rendered["autoscaling/policy-lag.json"]
    for policy in (cpu, lag):
        assert policy["ResourceId"] == resource
        assert policy["ScalableDimension"] == target["ScalableDimension"] == "ecs:service:DesiredCount"
        assert policy["PolicyType"] == "TargetTrackingScaling"
    spec = cpu["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert spec["PredefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    metric = lag["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"]) == (
        "AWS/Kinesis",
        "GetRecords.IteratorAgeMilliseconds",
    )
    assert metric["Dimensions"] == [{"Name": "StreamName", "Value": environment_stream(rendered)}]


def environment_stream(rendered: dict[str, Any]) -> str:
    return environment(rendered["task-definition.json"])["RECSYS_STREAM"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("job", ["migrate", "etl", "train", "load-vectors"])
def test_one_off_commands_are_real_recsys_commands(
    rendered: dict[str, Any], job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = rendered["task-definition-jobs.json"]
    run = rendered[f"run-task/{job}.json"]
    assert run["taskDefinition"] == jobs["family"]
    assert run["launchType"] == "FARGATE"
    (override,) = run["overrides"]["containerOverrides"]
    assert override["name"] == container(jobs)["name"]
    command = override["command"]
    assert command[0] == job
    # the container's environment is in place when the parser is built (flags default from RECSYS_*)
    settings_in_container(jobs, monkeypatch)
    from recsys.cli import build_parser

    parser = build_parser()
    assert job in subcommands(parser), f"`recsys {job}` is not a command (yet?)"
    args = parser.parse_args(command)
    assert callable(getattr(args, "func", None))


def test_jobs_environment_is_read_by_the_settings(
    rendered: dict[str, Any], example_vars: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in_container(rendered["task-definition-jobs.json"], monkeypatch)
    assert settings.lake == f"s3://{example_vars['LAKE_BUCKET']}/lake"
    assert settings.artifacts == f"s3://{example_vars['ARTIFACTS_BUCKET']}/artifacts"
    assert settings.source_url is not None and settings.database_url is not None
    assert settings.log_format == "json"


def test_one_off_jobs_use_the_task_role_not_a_local_emulator(
    rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Fargate the credentials come from the task role through the container credentials endpoint
    (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI), never from AWS_ACCESS_KEY_ID: a job that reads s3://
    URIs there must use real S3, not start the embedded stack's emulator (`recsys train` and
    `recsys load-vectors` prepare their s3:// URIs with ``prepare_aws``)."""
    from recsys import bootstrap
    from recsys.bootstrap import prepare_aws

    settings = settings_in_container(rendered["task-definition-jobs.json"], monkeypatch)
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_REGION":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/task-role-id")
    started: list[object] = []
    monkeypatch.setattr(bootstrap, "ensure_local_stack", started.append)
    monkeypatch.setattr(bootstrap, "use_local_aws", started.append)
    assert settings.artifacts is not None and settings.lake is not None
    prepare_aws(settings, settings.artifacts, settings.lake)
    assert started == [], "on Fargate, train/load-vectors would use a local emulator instead of S3"
    assert "AWS_ENDPOINT_URL" not in os.environ
