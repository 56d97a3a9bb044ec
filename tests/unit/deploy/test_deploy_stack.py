"""The stack agrees with the code it runs and with the AWS APIs, for each layout and database mode.

Carried over from the tests of the former JSON templates: container commands are parsed by the real
``recsys`` parser, their environment (and secrets) read by the real ``Settings``, health check paths
are real routes, the stop timeout leaves room for the drain, requests are valid for botocore's API
models, and the network, buckets, scaling and pipeline say what docs/operations.md says they do.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import botocore.session
import pytest
from botocore.model import OperationModel, Shape
from botocore.validate import ParamValidator

from recsys.settings import Settings

from .conftest import DEPLOYED, REQUIRED, ProbeTarget, Stack, StackError, evaluate, probe_target

FAKE_SECRETS = {
    "RECSYS_DATABASE_URL": "postgresql://recsys:secret@db.internal:5432/recsys",
    "RECSYS_API_TOKEN": "a-real-looking-token-0123456789",
    "RECSYS_SOURCE_URL": "mysql+pymysql://reader:secret@shop.internal:3306/classicmodels",
    "PGPASSWORD": "a-generated-password",
}
EXISTING_DB = {
    **DEPLOYED,
    "DatabaseMode": "existing",
    "DatabaseUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:recsys/database-url-AbCdEf",
}


@cache
def operation(service: str, name: str) -> OperationModel:
    return botocore.session.get_session().get_service_model(service).operation_model(name)


def enum_problems(value: Any, shape: Shape, where: str = "") -> list[str]:
    """botocore's ParamValidator does not check enumerations; this does."""
    problems: list[str] = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, child in value.items():
            if key in shape.members:
                problems += enum_problems(child, shape.members[key], f"{where}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, child in enumerate(value):
            problems += enum_problems(child, shape.member, f"{where}[{i}]")
    elif shape.type_name == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        problems.append(f"{where}: {value!r} is not one of {shape.enum}")
    return problems


def api_problems(document: dict[str, Any], op: OperationModel) -> list[str]:
    report = ParamValidator().validate(document, op.input_shape)
    return ([report.generate_report()] if report.has_errors() else []) + enum_problems(
        document, op.input_shape
    )


def containers(stack: Stack, task: str = "ServiceTaskDefinition") -> dict[str, dict[str, Any]]:
    return {c["Name"]: c for c in stack.props(task)["ContainerDefinitions"]}


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {item["Name"]: str(item["Value"]) for item in container.get("Environment", [])}


def secrets(container: dict[str, Any]) -> dict[str, str]:
    return {item["Name"]: item["ValueFrom"] for item in container.get("Secrets", [])}


def settings_in(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the process in the container builds them: its environment plus its secrets."""
    for name in list(os.environ):
        if name.startswith("RECSYS_") or name == "PGPASSWORD":
            monkeypatch.delenv(name)
    for name, value in environment(container).items():
        monkeypatch.setenv(name, value)
    for name in secrets(container):
        monkeypatch.setenv(name, FAKE_SECRETS[name])
    return Settings()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parses_as_a_command(command: list[str]) -> bool:
    from recsys.cli import build_parser

    parser = build_parser()
    assert command[0] in subcommands(parser), f"`recsys {command[0]}` is not a command"
    return callable(getattr(parser.parse_args(command), "func", None))


# ------------------------------------------------------------------------------- parameters, rules


def test_the_defaults_and_the_required_parameters_make_a_stack() -> None:
    assert not evaluate(REQUIRED).conditions["HasImage"]  # the first deploy: infrastructure only
    assert evaluate(DEPLOYED).conditions["CreateService"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"TaskCpu": "256", "TaskMemory": "4096"}, "ServiceTaskSizeIsAFargateSize"),
        ({"JobsCpu": "4096", "JobsMemory": "4096"}, "JobsTaskSizeIsAFargateSize"),
        ({"DatabaseMode": "existing"}, "ExistingDatabaseNeedsItsSecret"),
        ({"StopTimeoutSeconds": "20"}, "StopTimeoutSeconds: 20 is below 30"),
        ({"IngressCidr": "everyone"}, "IngressCidr: 'everyone' does not match"),
        ({"StreamMode": "SOMETIMES"}, "StreamMode: 'SOMETIMES' is not one of"),
        ({"PipelineSchedule": "every night"}, "PipelineSchedule: 'every night' does not match"),
        ({"ImageTag": "latest:x"}, "ImageTag: 'latest:x' does not match"),
        ({"NotAParameter": "x"}, "NotAParameter: not a parameter of the stack"),
    ],
)
def test_inconsistent_parameters_are_refused_with_a_reason(change: dict[str, str], complaint: str) -> None:
    with pytest.raises(StackError) as caught:
        evaluate({**DEPLOYED, **change})
    assert any(p.startswith(complaint) for p in caught.value.problems), caught.value.problems


def test_a_missing_required_parameter_is_refused() -> None:
    given = dict(DEPLOYED)
    del given["SourceUrlSecretArn"]
    with pytest.raises(StackError) as caught:
        evaluate(given)
    assert caught.value.problems == ["SourceUrlSecretArn: must have values"]


# ------------------------------------------------------------------------------- task definitions


@pytest.mark.parametrize("layout", ["sidecar", "single"])
def test_task_definitions_are_valid_register_task_definition_requests(
    layout: str, as_api: Callable[[Any, Shape], Any]
) -> None:
    stack = evaluate({**DEPLOYED, "TaskLayout": layout})
    op = operation("ecs", "RegisterTaskDefinition")
    for task in ("ServiceTaskDefinition", "JobsTaskDefinition"):
        request = as_api(stack.props(task), op.input_shape)
        assert api_problems(request, op) == [], task


def test_the_api_validation_catches_a_broken_task_definition(
    stack: Stack, as_api: Callable[[Any, Shape], Any]
) -> None:
    op = operation("ecs", "RegisterTaskDefinition")
    broken = copy.deepcopy(stack.props("ServiceTaskDefinition"))
    broken["NetworkMode"] = "vpc"
    broken["ContainerDefinitions"][0]["StopTimeut"] = 30
    problems = "\n".join(api_problems(as_api(broken, op.input_shape), op))
    assert "networkMode" in problems and "StopTimeut" in problems


@pytest.mark.parametrize("layout", ["sidecar", "single"])
def test_fargate_basics(layout: str) -> None:
    stack = evaluate({**DEPLOYED, "TaskLayout": layout})
    for task in ("ServiceTaskDefinition", "JobsTaskDefinition"):
        props = stack.props(task)
        assert props["NetworkMode"] == "awsvpc" and props["RequiresCompatibilities"] == ["FARGATE"]
        assert props["RuntimePlatform"]["CpuArchitecture"] == "X86_64"  # the lock pins x86-64 CPU torch
        for box in props["ContainerDefinitions"]:
            assert box["Essential"] is True
            assert box["LinuxParameters"]["InitProcessEnabled"] is True  # signals forwarded, zombies reaped
            assert box["ReadonlyRootFilesystem"] is True
            (scratch,) = box["MountPoints"]  # the only writable path (the Dockerfile's VOLUME)
            assert scratch["ContainerPath"] == "/scratch" and scratch["ReadOnly"] is False
            assert [v["Name"] for v in props["Volumes"]] == [scratch["SourceVolume"]]
            assert environment(box)["RECSYS_STATE_DIR"].startswith("/scratch/")
            assert box["User"].split(":")[0] not in ("0", "root")
            options = box["LogConfiguration"]["Options"]
            assert box["LogConfiguration"]["LogDriver"] == "awslogs"
            assert set(options) >= {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"}
            assert box["Image"].endswith(":0.1.0") and box["Image"].startswith(
                stack.att("Repository", "RepositoryUri")
            )
            for value in environment(box).values():
                assert "secret" not in value.lower() and "password" not in value.lower()
            assert not set(environment(box)) & set(secrets(box))


def test_the_sidecar_task_is_the_consumer_and_the_api_from_one_image(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    boxes = containers(stack)
    assert set(boxes) == {"consumer", "api"}
    consumer, api = boxes["consumer"], boxes["api"]
    assert consumer["Image"] == api["Image"]
    assert consumer["Command"] == ["consume"] and parses_as_a_command(consumer["Command"])
    assert api["Command"] == ["serve"] and parses_as_a_command(api["Command"])
    for box in (consumer, api):  # each its own share, and a restart in place (as `recsys run` does)
        assert int(box["Cpu"]) > 0 and int(box["MemoryReservation"]) > 0
        assert box["RestartPolicy"]["Enabled"] is True
    props = stack.props("ServiceTaskDefinition")
    assert int(consumer["Cpu"]) + int(api["Cpu"]) <= int(props["Cpu"])
    assert int(consumer["MemoryReservation"]) + int(api["MemoryReservation"]) <= int(props["Memory"])

    reads = settings_in(consumer, monkeypatch)
    assert reads.stream == stack.ref("Stream") and reads.delivery_stream == stack.ref("DeliveryStream")
    assert reads.dead_letters == f"s3://{stack.ref('DeliveryBucket')}/dead-letters"
    assert reads.log_format == "json" and reads.database_url is not None
    assert reads.metrics_port is not None

    serves = settings_in(api, monkeypatch)
    assert serves.host == "0.0.0.0"  # the load balancer reaches the task on its own address
    (mapping,) = api["PortMappings"]
    assert serves.port == int(mapping["ContainerPort"])
    # one /metrics for both: the API appends what the consumer serves on the task's localhost
    assert serves.api.consumer_metrics_url == f"http://127.0.0.1:{reads.metrics_port}/metrics"
    assert serves.api_token is not None and serves.database_url is not None
    assert "PortMappings" not in consumer  # the consumer's metrics stay inside the task


def test_the_single_layout_runs_recsys_run(single: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    (box,) = single.props("ServiceTaskDefinition")["ContainerDefinitions"]
    assert box["Command"] == ["run"] and parses_as_a_command(box["Command"])
    reads = settings_in(box, monkeypatch)
    assert reads.stream == single.ref("Stream") and reads.host == "0.0.0.0"
    assert reads.port == int(box["PortMappings"][0]["ContainerPort"])
    assert reads.api_token is not None


def test_database_credentials_come_from_secrets_manager_in_both_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created, existing = evaluate(DEPLOYED), evaluate(EXISTING_DB)
    # created: the URL names the host and user; the password is the generated secret's, as PGPASSWORD
    api = containers(created)["api"]
    assert secrets(api)["PGPASSWORD"] == f"{created.ref('DatabaseSecret')}:password::"
    url = environment(api)["RECSYS_DATABASE_URL"]
    assert url.startswith("postgresql://recsys@") and "sslmode=require" in url
    assert created.att("Database", "Endpoint.Address") in url
    # existing: the whole URL is the secret
    api = containers(existing)["api"]
    assert secrets(api)["RECSYS_DATABASE_URL"] == EXISTING_DB["DatabaseUrlSecretArn"]
    assert "RECSYS_DATABASE_URL" not in environment(api)
    assert "Database" not in existing.resources and "DatabaseSecret" not in existing.resources
    assert settings_in(api, monkeypatch).database_url is not None


def test_the_database_is_encrypted_private_and_reached_only_from_the_tasks(stack: Stack) -> None:
    db = stack.props("Database")
    assert db["Engine"] == "postgres" and db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
    assert int(db["EngineVersion"]) >= 16  # pgvector 0.8 (HNSW iterative scans) on RDS: 16.5+, 17.1+
    assert "{{resolve:secretsmanager:" in db["MasterUserPassword"]
    assert stack.resources["Database"]["Metadata"]  # and DeletionPolicy: Snapshot (template)
    assert db["VPCSecurityGroups"] == [stack.att("DatabaseSecurityGroup", "GroupId")]
    rules = stack.props("DatabaseSecurityGroup")["SecurityGroupIngress"]
    sources = {r["SourceSecurityGroupId"] for r in rules}
    assert sources == {stack.att("TaskSecurityGroup", "GroupId"), stack.att("JobsSecurityGroup", "GroupId")}
    assert all("CidrIp" not in r for r in rules)
    assert {r["FromPort"] for r in rules} == {"5432"}


def test_secrets_read_by_the_execution_roles_are_exactly_the_containers_secrets(stack: Stack) -> None:
    for task, role in (
        ("ServiceTaskDefinition", "ExecutionRole"),
        ("JobsTaskDefinition", "JobsExecutionRole"),
    ):
        wanted = {
            value.split(":password::")[0]
            for box in stack.props(task)["ContainerDefinitions"]
            for value in secrets(box).values()
        }
        (policy,) = stack.props(role)["Policies"]
        granted = {
            r
            for s in policy["PolicyDocument"]["Statement"]
            if "secretsmanager:GetSecretValue" in s["Action"]
            for r in s["Resource"]
        }
        assert granted == wanted, role


def test_jobs_environment_is_read_by_the_settings(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    (box,) = stack.props("JobsTaskDefinition")["ContainerDefinitions"]
    reads = settings_in(box, monkeypatch)
    assert reads.lake == f"s3://{stack.ref('LakeBucket')}/lake"
    assert reads.artifacts == f"s3://{stack.ref('ArtifactsBucket')}/artifacts"
    assert reads.source_url is not None and reads.database_url is not None
    assert stack.outputs["LakeUri"] == reads.lake and stack.outputs["ArtifactsUri"] == reads.artifacts


# ------------------------------------------------------------------------------- health, drain


def test_health_checks_probe_real_routes(stack: Stack) -> None:
    from recsys.runtime import api_app

    paths = set(api_app(Settings()).openapi()["paths"])
    assert stack.props("TargetGroup")["HealthCheckPath"] == "/readyz" in paths
    api = containers(stack)["api"]
    assert "/healthz'" in api["HealthCheck"]["Command"][-1] and "/healthz" in paths
    consumer = containers(stack)["consumer"]
    assert "/metrics'" in consumer["HealthCheck"]["Command"][-1]


@pytest.fixture
def metrics_server() -> Iterator[ProbeTarget]:
    with probe_target("/metrics") as target:
        yield target


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_consumer_health_check_passes_only_when_its_metrics_answer(
    stack: Stack, metrics_server: ProbeTarget, status: int, healthy: bool
) -> None:
    metrics_server.status = status
    command = containers(stack)["consumer"]["HealthCheck"]["Command"]
    assert command[:2] == ["CMD", "python"]
    done = subprocess.run(
        [sys.executable, *command[2:]],
        env={"RECSYS_METRICS_PORT": str(metrics_server.port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode == 0) is healthy


def test_stop_timeouts_leave_room_for_the_drains(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    consumer, api = containers(stack)["consumer"], containers(stack)["api"]
    reads = settings_in(consumer, monkeypatch)
    assert reads.consumer.shutdown_deadline_s == defaults.consumer.shutdown_deadline_s
    # the drain must end, and the process exit, before ECS sends SIGKILL; Fargate allows 120 s
    assert reads.consumer.shutdown_deadline_s + 5 <= int(consumer["StopTimeout"]) <= 120
    assert defaults.api.shutdown_timeout_s + 5 <= int(api["StopTimeout"]) <= 120
    (run,) = evaluate({**DEPLOYED, "TaskLayout": "single"}).props("ServiceTaskDefinition")[
        "ContainerDefinitions"
    ]
    assert reads.consumer.shutdown_deadline_s + 5 <= int(run["StopTimeout"])


# ------------------------------------------------------------------------------- service, scaling


def test_the_service_routes_the_load_balancer_to_the_api_port(stack: Stack) -> None:
    service = stack.props("Service")
    (balancer,) = service["LoadBalancers"]
    api = containers(stack)[balancer["ContainerName"]]
    assert api["PortMappings"][0]["ContainerPort"] == balancer["ContainerPort"]
    assert stack.props("TargetGroup")["Port"] == balancer["ContainerPort"]
    assert service["TaskDefinition"] == stack.ref("ServiceTaskDefinition")
    assert service["LaunchType"] == "FARGATE"
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    assert int(service["HealthCheckGracePeriodSeconds"]) >= api["HealthCheck"]["StartPeriod"]
    assert (
        evaluate({**DEPLOYED, "TaskLayout": "single"}).props("Service")["LoadBalancers"][0]["ContainerName"]
        == "recsys"
    )


@pytest.mark.parametrize("layout", ["sidecar", "single"])
def test_the_api_outlasts_the_load_balancer_on_idle_connections(
    layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The balancer must be the one to close an idle connection: an API that closes one the balancer
    is about to reuse makes a 502 (uvicorn's default keep-alive is 5 s, an ALB's idle timeout 60 s)."""
    stack = evaluate({**DEPLOYED, "TaskLayout": layout})
    attributes = {a["Key"]: a["Value"] for a in stack.props("LoadBalancer")["LoadBalancerAttributes"]}
    (balancer,) = stack.props("Service")["LoadBalancers"]
    api = settings_in(containers(stack)[balancer["ContainerName"]], monkeypatch)
    assert api.api.keep_alive_timeout_s > int(attributes["idle_timeout.timeout_seconds"])


def test_no_service_before_the_image_or_while_the_first_pipeline_runs() -> None:
    for stack in (evaluate(REQUIRED), evaluate({**DEPLOYED, "ServiceEnabled": "false"})):
        assert not {"Service", "ScalableTarget", "ScaleOnCpu"} & set(stack.resources)
        assert "Stream" in stack.resources and "Repository" in stack.resources
    assert "Pipeline" in evaluate({**DEPLOYED, "ServiceEnabled": "false"}).resources


def test_autoscaling_tracks_cpu_consumer_lag_and_requests_per_target(stack: Stack) -> None:
    policies = stack.of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
    assert len(policies) == 3
    target = stack.props("ScalableTarget")
    assert target["ResourceId"] == f"service/{stack.ref('Cluster')}/{stack.att('Service', 'Name')}"
    assert 1 <= int(target["MinCapacity"]) <= int(target["MaxCapacity"])
    specs = {}
    for policy in policies.values():
        assert policy["ScalingTargetId"] == stack.ref("ScalableTarget")
        assert policy["PolicyType"] == "TargetTrackingScaling"
        config = policy["TargetTrackingScalingPolicyConfiguration"]
        spec = config.get("PredefinedMetricSpecification") or config["CustomizedMetricSpecification"]
        specs[spec.get("PredefinedMetricType") or spec["MetricName"]] = spec
    assert set(specs) == {
        "ECSServiceAverageCPUUtilization",
        "GetRecords.IteratorAgeMilliseconds",
        "ALBRequestCountPerTarget",
    }
    lag = specs["GetRecords.IteratorAgeMilliseconds"]
    assert lag["Namespace"] == "AWS/Kinesis" and lag["Dimensions"] == [
        {"Name": "StreamName", "Value": stack.ref("Stream")}
    ]
    label = specs["ALBRequestCountPerTarget"]["ResourceLabel"]
    balancer, group = (
        stack.att("LoadBalancer", "LoadBalancerFullName"),
        stack.att("TargetGroup", "TargetGroupFullName"),
    )
    assert label == f"{balancer}/{group}"
    op = operation("application-autoscaling", "PutScalingPolicy")
    for policy in policies.values():
        request = {
            "PolicyName": "p",
            "ServiceNamespace": "ecs",
            "ResourceId": target["ResourceId"],
            "ScalableDimension": "ecs:service:DesiredCount",
            "PolicyType": policy["PolicyType"],
            "TargetTrackingScalingPolicyConfiguration": policy["TargetTrackingScalingPolicyConfiguration"],
        }
        request["TargetTrackingScalingPolicyConfiguration"] = {
            k: (float(v) if k == "TargetValue" else int(v) if k.endswith("Cooldown") else v)
            for k, v in request["TargetTrackingScalingPolicyConfiguration"].items()
        }
        assert api_problems(request, op) == []


# ------------------------------------------------------------------------------- network


def test_security_groups_let_in_only_what_the_design_allows(stack: Stack) -> None:
    lb = stack.att("LoadBalancerSecurityGroup", "GroupId")
    task = stack.att("TaskSecurityGroup", "GroupId")
    (http,) = stack.props("LoadBalancerSecurityGroup")["SecurityGroupIngress"]
    assert (http["CidrIp"], http["FromPort"]) == (REQUIRED["IngressCidr"], 80)
    ingress = stack.of_type("AWS::EC2::SecurityGroupIngress")
    into_tasks = [r for r in ingress.values() if r["GroupId"] == task]
    assert [(r["SourceSecurityGroupId"], r["FromPort"]) for r in into_tasks] == [(lb, "8000")]
    assert "SecurityGroupIngress" not in stack.props("TaskSecurityGroup")
    assert "SecurityGroupIngress" not in stack.props("JobsSecurityGroup")
    # HTTPS and a scraper only when asked for
    asked = evaluate(
        {
            **DEPLOYED,
            "CertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b-2c3d",
            "ScraperSecurityGroupId": "sg-0123456789abcdef0",
        }
    )
    opened = {
        (r["GroupId"], r.get("CidrIp") or r.get("SourceSecurityGroupId"), r["FromPort"])
        for r in asked.of_type("AWS::EC2::SecurityGroupIngress").values()
    }
    assert (lb, REQUIRED["IngressCidr"], 443) in opened
    assert (task, "sg-0123456789abcdef0", "8000") in opened
    (redirect,) = asked.props("HttpListener")["DefaultActions"]
    assert redirect["Type"] == "redirect" and redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert asked.props("HttpsListener")["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")


def test_vpc_endpoints_are_an_option_covering_what_the_tasks_reach() -> None:
    assert not evaluate(DEPLOYED).of_type("AWS::EC2::VPCEndpoint")
    stack = evaluate(
        {**DEPLOYED, "CreateVpcEndpoints": "true", "PrivateRouteTableIds": "rtb-0a1b2c3d,rtb-0a1b2c3e"}
    )
    services = {
        p["ServiceName"].removeprefix("com.amazonaws.eu-west-1.")
        for p in stack.of_type("AWS::EC2::VPCEndpoint").values()
    }
    assert services == {
        "ecr.api",
        "ecr.dkr",
        "logs",
        "kinesis-streams",
        "kinesis-firehose",
        "secretsmanager",
        "s3",
    }


# ------------------------------------------------------------------------------- stream, delivery, buckets


def test_the_stream_is_encrypted_and_provisioned_or_on_demand(stack: Stack) -> None:
    stream = stack.props("Stream")
    assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert stream["StreamModeDetails"] == {"StreamMode": "PROVISIONED"} and stream["ShardCount"] == "2"
    on_demand = evaluate({**DEPLOYED, "StreamMode": "ON_DEMAND"}).props("Stream")
    assert on_demand["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"} and "ShardCount" not in on_demand


def test_the_delivery_stream_writes_the_delivery_prefix_encrypted(
    stack: Stack, as_api: Callable[[Any, Shape], Any]
) -> None:
    props = stack.props("DeliveryStream")
    s3 = props["ExtendedS3DestinationConfiguration"]
    assert s3["BucketARN"] == stack.att("DeliveryBucket", "Arn")
    assert s3["Prefix"] == "recommendations/data/" and s3["ErrorOutputPrefix"].startswith(
        "recommendations/errors/"
    )
    assert s3["BufferingHints"] == {"IntervalInSeconds": "60", "SizeInMBs": "5"}
    assert props["DeliveryStreamEncryptionConfigurationInput"] == {"KeyType": "AWS_OWNED_CMK"}
    assert stack.outputs["DeliveryUri"] == f"s3://{stack.ref('DeliveryBucket')}/recommendations"
    op = operation("firehose", "CreateDeliveryStream")
    request = as_api({"DeliveryStreamName": "d", **props}, op.input_shape)
    assert api_problems(request, op) == []


def test_buckets_are_encrypted_private_tls_only_and_expire_what_they_must(stack: Stack) -> None:
    buckets = stack.of_type("AWS::S3::Bucket")
    assert set(buckets) == {"LakeBucket", "ArtifactsBucket", "DeliveryBucket"}
    policies = {p["Bucket"]: p["PolicyDocument"] for p in stack.of_type("AWS::S3::BucketPolicy").values()}
    for logical_id, bucket in buckets.items():
        (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
        (deny,) = policies[stack.ref(logical_id)]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert set(deny["Resource"]) == {stack.att(logical_id, "Arn"), stack.att(logical_id, "Arn") + "/*"}
    assert buckets["ArtifactsBucket"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "VersioningConfiguration" not in buckets["LakeBucket"]  # recsys forget: no old copies
    assert "VersioningConfiguration" not in buckets["DeliveryBucket"]
    noncurrent = buckets["ArtifactsBucket"]["LifecycleConfiguration"]["Rules"][0]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": "30"}
    expiring = {
        r.get("Prefix"): r.get("ExpirationInDays")
        for r in buckets["DeliveryBucket"]["LifecycleConfiguration"]["Rules"]
    }
    # the prefixes the records and the dead letters really go to
    firehose = stack.props("DeliveryStream")["ExtendedS3DestinationConfiguration"]["Prefix"]
    dead = environment(containers(stack)["consumer"])["RECSYS_DEAD_LETTERS"].split("/", 3)[3]
    assert firehose.startswith("recommendations/") and expiring["recommendations/"] == "30"
    assert expiring[dead + "/"] == "30"


# ------------------------------------------------------------------------------- the pipeline


def steps(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    """The pipeline's Task states in execution order."""
    states = stack.props("Pipeline")["Definition"]["States"]
    name, order = stack.props("Pipeline")["Definition"]["StartAt"], []
    while name in states and states[name]["Type"] != "Succeed":
        state = states[name]
        if state["Type"] == "Task":
            order.append((name, state))
            name = state["Next"]
        else:
            assert state["Type"] == "Choice"
            (choice,) = state["Choices"]
            assert choice["NumericEquals"] == 0 and state["Default"] == "PipelineFailed"
            name = choice["Next"]
    assert states[name]["Type"] == "Succeed"
    return order


def test_the_pipeline_runs_the_four_jobs_in_order_and_stops_at_a_failure(
    stack: Stack, as_api: Callable[[Any, Shape], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = steps(stack)
    (job,) = stack.props("JobsTaskDefinition")["ContainerDefinitions"]
    settings_in(job, monkeypatch)  # flags default from the container's RECSYS_* variables
    commands = []
    op = operation("ecs", "RunTask")
    for name, state in order:
        assert state["Resource"] == "arn:aws:states:::ecs:runTask.sync"
        params = state["Parameters"]
        assert params["TaskDefinition"] == stack.ref("JobsTaskDefinition")
        assert params["Cluster"] == stack.att("Cluster", "Arn")
        network = params["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["SecurityGroups"] == [stack.att("JobsSecurityGroup", "GroupId")]
        (override,) = params["Overrides"]["ContainerOverrides"]
        assert override["Name"] == job["Name"]
        assert parses_as_a_command(override["Command"])
        commands.append(override["Command"][0])
        assert api_problems(as_api(params, op.input_shape), op) == [], name
        assert any("States.TaskFailed" in r["ErrorEquals"] for r in state["Retry"])
        assert all(r["MaxAttempts"] <= 3 for r in state["Retry"])
        assert state["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "PipelineFailed"}
        ]
    assert commands == ["migrate", "etl", "train", "load-vectors"]
    assert stack.props("Pipeline")["Definition"]["States"]["PipelineFailed"]["Type"] == "Fail"


def test_the_schedule_is_off_by_default_and_starts_the_pipeline_when_set(stack: Stack) -> None:
    assert not stack.of_type("AWS::Events::Rule")
    scheduled = evaluate({**DEPLOYED, "PipelineSchedule": "cron(0 3 * * ? *)"})
    (rule,) = scheduled.of_type("AWS::Events::Rule").values()
    assert rule["ScheduleExpression"] == "cron(0 3 * * ? *)" and rule["State"] == "ENABLED"
    assert rule["Targets"][0]["Arn"] == scheduled.ref("Pipeline")


def test_the_etl_step_can_run_a_glue_job_instead(stack: Stack) -> None:
    glued = evaluate({**DEPLOYED, "EtlGlueJobName": "recsys-etl"})
    names = [name for name, _ in steps(glued)]
    assert names == ["Migrate", "Etl", "Train", "LoadVectors"]
    etl = dict(steps(glued))["Etl"]
    assert etl["Resource"] == "arn:aws:states:::glue:startJobRun.sync"
    assert etl["Parameters"] == {"JobName": "recsys-etl"}
    (policy,) = glued.props("PipelineRole")["Policies"]
    (glue,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "RunTheGlueEtlJob"]
    assert glue["Resource"] == "arn:aws:glue:eu-west-1:123456789012:job/recsys-etl"
    (policy,) = stack.props("PipelineRole")["Policies"]
    assert "RunTheGlueEtlJob" not in {s["Sid"] for s in policy["PolicyDocument"]["Statement"]}


# ------------------------------------------------------------------------------- alarms, outputs


def test_every_alarm_is_a_valid_put_metric_alarm_request(
    stack: Stack, as_api: Callable[[Any, Shape], Any]
) -> None:
    alarms = stack.of_type("AWS::CloudWatch::Alarm")
    names = {a["AlarmDescription"].split(":")[0] for a in alarms.values()}
    assert names == {
        "consumer-lag",
        "stream-throttled",
        "delivery-throttled",
        "delivery-freshness",
        "api-unhealthy-targets",
        "api-5xx",
        "api-latency",
        "sidecar-consumer-metrics",
        "service-running-tasks",
    }
    op = operation("cloudwatch", "PutMetricAlarm")
    for logical_id, alarm in alarms.items():
        request = as_api({"AlarmName": logical_id, **alarm}, op.input_shape)
        request["Threshold"] = float(request["Threshold"])
        assert api_problems(request, op) == [], logical_id
        assert alarm["AlarmActions"] == [stack.ref("AlarmTopic")]


def test_the_sidecar_alarm_counts_the_api_log_line_that_says_the_consumer_is_missing(
    stack: Stack, root: Any
) -> None:
    pattern = stack.props("ConsumerMetricsMissingFilter")["FilterPattern"].strip('"')
    assert pattern in (root / "service" / "metrics.py").read_text()  # the warning the API logs
    (transform,) = stack.props("ConsumerMetricsMissingFilter")["MetricTransformations"]
    alarm = stack.props("SidecarConsumerMetricsAlarm")
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        transform["MetricNamespace"],
        transform["MetricName"],
    )


def test_outputs_name_what_an_operator_needs(stack: Stack) -> None:
    assert stack.outputs["ApiUrl"].startswith("http://")
    for name in (
        "StreamName",
        "DeliveryStreamName",
        "LakeBucketName",
        "ArtifactsBucketName",
        "DeliveryBucketName",
        "StateMachineArn",
        "DeadLettersUri",
        "RepositoryUri",
    ):
        assert stack.outputs[name], name
    assert stack.outputs["StateMachineArn"] == stack.ref("Pipeline")
