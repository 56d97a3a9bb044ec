"""The stack's IAM policies: real action names, the stack's own resources, exactly what the code calls.

An IAM action is the service prefix plus the API operation name, so botocore's service models give
the real names; the few actions that are not operation names are mapped explicitly (``KNOWN``).
Carried over from the former deploy/ecs/templates/iam/*.json, resource by resource.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from moto.iam.policy_validation import IAMPolicyDocumentValidator, IAMTrustPolicyDocumentValidator

from .conftest import DEPLOYED, REGION, Stack, evaluate

# IAM prefix -> botocore service model
SERVICES = {
    "kinesis": "kinesis",
    "firehose": "firehose",
    "s3": "s3",
    "logs": "logs",
    "ecr": "ecr",
    "secretsmanager": "secretsmanager",
    "kms": "kms",
    "sts": "sts",
    "ecs": "ecs",
    "events": "events",
    "states": "stepfunctions",
    "glue": "glue",
    "iam": "iam",
}
# actions whose name is not an operation name: action -> the operation it authorises
KNOWN = {
    "s3:ListBucket": "ListObjectsV2",
    "s3:ListBucketMultipartUploads": "ListMultipartUploads",
    "logs:DescribeResourcePolicies": "DescribeResourcePolicies",
    "logs:PutResourcePolicy": "PutResourcePolicy",
    "logs:DescribeLogGroups": "DescribeLogGroups",
}
# permission-only actions (no API operation of that name): iam:PassRole (handing a role to a
# service: ECS, for the tasks the pipeline starts), and what Step Functions needs to deliver its
# execution logs to CloudWatch Logs ("vended logs"), per the Step Functions developer guide
PERMISSION_ONLY = {
    "iam:PassRole",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
}
# the only statements allowed a "*" resource: the actions support no resource-level permission
NO_RESOURCE_LEVEL = (
    {"ecr:GetAuthorizationToken"}
    | PERMISSION_ONLY
    | {
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
    }
)
ROLES = ["TaskRole", "ExecutionRole", "JobsTaskRole", "JobsExecutionRole", "FirehoseRole", "PipelineRole"]
EVERYTHING = {
    **DEPLOYED,
    "PipelineSchedule": "rate(1 day)",
    "EtlGlueJobName": "recsys-etl",
    "StreamKmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-4e5f",
    "SecretsKmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1a1b2c3d-4e5f",
}


@cache
def operations(service: str) -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_service_model(service).operation_names)


def listify(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def policy(stack: Stack, role: str) -> dict[str, Any]:
    (inline,) = stack.props(role)["Policies"]
    document: dict[str, Any] = inline["PolicyDocument"]
    return document


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def actions(document: dict[str, Any]) -> set[str]:
    return {a for s in statements(document) for a in listify(s["Action"])}


def resources_of(document: dict[str, Any], action: str) -> set[str]:
    return {r for s in statements(document) if action in listify(s["Action"]) for r in listify(s["Resource"])}


def real_action(action: str) -> bool:
    prefix, _, name = action.partition(":")
    if action in PERMISSION_ONLY:
        return True
    if action in KNOWN:
        return KNOWN[action] in operations(SERVICES[prefix])
    return prefix in SERVICES and name in operations(SERVICES[prefix])


def s3_object_arn(uri: str) -> str:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return f"arn:aws:s3:::{bucket}/{prefix}/*"


def env(stack: Stack, task: str, container: str) -> dict[str, str]:
    (box,) = [c for c in stack.props(task)["ContainerDefinitions"] if c["Name"] == container]
    return {e["Name"]: str(e["Value"]) for e in box["Environment"]}


@pytest.fixture(scope="module")
def everything() -> Stack:
    """Every optional statement present: the schedule, the Glue ETL, customer managed keys."""
    return evaluate(EVERYTHING)


@pytest.mark.parametrize("role", [*ROLES, "ScheduleRole"])
def test_policy_is_valid_iam_with_real_actions_only(everything: Stack, role: str) -> None:
    document = policy(everything, role)
    IAMPolicyDocumentValidator(json.dumps(document)).validate()
    for statement in statements(document):
        assert statement["Effect"] == "Allow"
        for action in listify(statement["Action"]):
            assert "*" not in action and "?" not in action, f"{role}: wildcard action {action}"
            assert real_action(action), f"{role}: {action} is not an action of its service"


def test_the_action_check_catches_a_made_up_action() -> None:
    assert not real_action("kinesis:GetRecord")
    assert not real_action("firehose:PutRecordsBatch")
    assert real_action("firehose:PutRecordBatch")


@pytest.mark.parametrize("role", [*ROLES, "ScheduleRole"])
def test_no_wildcard_resources_where_the_arn_is_known(everything: Stack, role: str) -> None:
    for statement in statements(policy(everything, role)):
        granted = listify(statement["Action"])
        for resource in listify(statement["Resource"]):
            if resource == "*":
                assert set(granted) <= NO_RESOURCE_LEVEL, f"{role}: {granted} on every resource"
                continue
            arn = resource.split(":")
            assert arn[0] == "arn" and arn[1] == "aws", resource
            service = arn[2]
            prefixes = {a.split(":")[0] for a in granted}
            assert prefixes == {"states" if service == "states" else service}, (
                f"{role}: {granted} on {resource}"
            )
            if service not in {"s3", "iam"}:
                assert arn[3] == REGION and arn[4] == "123456789012", resource
            # the only wildcards: objects under one prefix, a log group's streams, one cluster's tasks
            unspecific = resource.replace("/*", "").removesuffix(":*")
            assert "*" not in unspecific and "?" not in unspecific, f"{role}: {resource}"


@pytest.mark.parametrize("role", [*ROLES, "ScheduleRole"])
def test_trust_policies_are_valid_and_scoped_to_the_account(everything: Stack, role: str) -> None:
    document = everything.props(role)["AssumeRolePolicyDocument"]
    IAMTrustPolicyDocumentValidator(json.dumps(document)).validate()
    (statement,) = statements(document)
    assert real_action(statement["Action"])
    assert "123456789012" in json.dumps(statement["Condition"])


def test_the_service_task_role_has_only_what_the_service_uses(stack: Stack) -> None:
    document = policy(stack, "TaskRole")
    consumer = env(stack, "ServiceTaskDefinition", "consumer")
    assert actions(document) == {
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
        "firehose:PutRecordBatch",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
    }
    stream = f"arn:aws:kinesis:eu-west-1:123456789012:stream/{consumer['RECSYS_STREAM']}"
    for action in ("DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords"):
        assert resources_of(document, f"kinesis:{action}") == {stream}
    delivery = f"arn:aws:firehose:eu-west-1:123456789012:deliverystream/{consumer['RECSYS_DELIVERY_STREAM']}"
    assert resources_of(document, "firehose:PutRecordBatch") == {delivery}
    assert resources_of(document, "s3:PutObject") == {s3_object_arn(consumer["RECSYS_DEAD_LETTERS"])}
    artifacts = stack.outputs["ArtifactsUri"]  # the API and consumer read the model from the database
    assert resources_of(document, "s3:GetObject") == {s3_object_arn(artifacts)}
    bucket, _, prefix = artifacts.removeprefix("s3://").partition("/")
    (listing,) = [s for s in statements(document) if "s3:ListBucket" in listify(s["Action"])]
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}


def test_a_customer_managed_stream_key_adds_decrypt_through_kinesis_only(everything: Stack) -> None:
    document = policy(everything, "TaskRole")
    (decrypt,) = [s for s in statements(document) if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Resource"] == EVERYTHING["StreamKmsKeyArn"]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": "kinesis.eu-west-1.amazonaws.com"}}


def test_the_jobs_task_role_reads_and_writes_only_the_lake_and_artifacts(stack: Stack) -> None:
    document = policy(stack, "JobsTaskRole")
    job = env(stack, "JobsTaskDefinition", "recsys")
    assert actions(document) == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListBucket",
        "s3:DeleteObject",
    }
    # the ETL removes the files of a failed run and old runs; nothing deletes artifacts
    assert resources_of(document, "s3:DeleteObject") == {s3_object_arn(job["RECSYS_LAKE"])}
    objects = {s3_object_arn(job["RECSYS_LAKE"]), s3_object_arn(job["RECSYS_ARTIFACTS"])}
    for action in ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"):
        assert resources_of(document, action) == objects
    # unconditioned on purpose: S3 answers a HeadObject of a missing key with 404 only to a caller
    # allowed to list the bucket (the request carries no s3:prefix), and ObjectStore.exists() needs 404
    buckets = {
        "arn:aws:s3:::" + uri.removeprefix("s3://").split("/")[0]
        for uri in (job["RECSYS_LAKE"], job["RECSYS_ARTIFACTS"])
    }
    assert resources_of(document, "s3:ListBucket") == buckets


@pytest.mark.parametrize(
    ("role", "task", "group"),
    [
        ("ExecutionRole", "ServiceTaskDefinition", "ServiceLogGroup"),
        ("JobsExecutionRole", "JobsTaskDefinition", "JobsLogGroup"),
    ],
)
def test_execution_roles_pull_the_one_image_and_log_to_their_group(
    stack: Stack, role: str, task: str, group: str
) -> None:
    document = policy(stack, role)
    assert actions(document) == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
    }
    assert resources_of(document, "ecr:BatchGetImage") == {stack.att("Repository", "Arn")}
    for box in stack.props(task)["ContainerDefinitions"]:
        assert box["Image"].startswith(stack.att("Repository", "RepositoryUri") + ":")
        assert box["LogConfiguration"]["Options"]["awslogs-group"] == stack.ref(group)
    assert resources_of(document, "logs:PutLogEvents") == {stack.att(group, "Arn")}


def test_customer_managed_secret_keys_add_decrypt_through_secrets_manager_only(everything: Stack) -> None:
    for role in ("ExecutionRole", "JobsExecutionRole"):
        (decrypt,) = [s for s in statements(policy(everything, role)) if s["Action"] == ["kms:Decrypt"]]
        assert decrypt["Resource"] == EVERYTHING["SecretsKmsKeyArn"]
        assert (
            decrypt["Condition"]["StringEquals"]["kms:ViaService"] == "secretsmanager.eu-west-1.amazonaws.com"
        )


def test_firehose_writes_only_where_the_delivery_stream_delivers(stack: Stack) -> None:
    document = policy(stack, "FirehoseRole")
    s3 = stack.props("DeliveryStream")["ExtendedS3DestinationConfiguration"]
    assert s3["RoleARN"] == stack.att("FirehoseRole", "Arn")
    bucket = stack.att("DeliveryBucket", "Arn")
    top = s3["Prefix"].split("/")[0]
    assert s3["ErrorOutputPrefix"].split("/")[0] == top
    assert resources_of(document, "s3:PutObject") == {f"{bucket}/{top}/*"}
    assert resources_of(document, "s3:ListBucket") == {bucket}
    assert resources_of(document, "logs:PutLogEvents") == {stack.att("DeliveryLogGroup", "Arn")}


def test_the_pipeline_runs_only_the_jobs_task_and_passes_only_its_roles(everything: Stack) -> None:
    document = policy(everything, "PipelineRole")
    assert resources_of(document, "ecs:RunTask") == {everything.ref("JobsTaskDefinition")}
    assert resources_of(document, "iam:PassRole") == {
        everything.att("JobsTaskRole", "Arn"),
        everything.att("JobsExecutionRole", "Arn"),
    }
    (passing,) = [s for s in statements(document) if s["Action"] == ["iam:PassRole"]]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert resources_of(document, "glue:StartJobRun") == {
        "arn:aws:glue:eu-west-1:123456789012:job/recsys-etl"
    }
    schedule = policy(everything, "ScheduleRole")
    assert actions(schedule) == {"states:StartExecution"}
    assert resources_of(schedule, "states:StartExecution") == {everything.ref("Pipeline")}


def _operation_names_in(paths: list[Path], wanted: dict[str, str]) -> set[str]:
    """Operations (IAM action names) the code names, as a method or as a method-name string."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            if name in wanted:
                found.add(wanted[name])
    return found


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_kinesis_and_firehose_call_of_the_consumer_is_granted(root: Path, stack: Stack) -> None:
    """The consumer's code (not its local-stack setup or the demo producer) against the task role."""
    wanted = {_snake(op): f"{prefix}:{op}" for prefix in ("kinesis", "firehose") for op in operations(prefix)}
    consumer = root / "consumer"
    paths = [p for p in consumer.rglob("*.py") if p.name not in {"setup.py", "producer.py"}]
    assert paths, "no consumer code found"
    called = _operation_names_in(paths, wanted)
    assert called, "the consumer names no Kinesis/Firehose operation: the scan is broken"
    assert called - actions(policy(stack, "TaskRole")) == set()
