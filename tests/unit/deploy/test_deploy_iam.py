"""The IAM policies: real action names, specific resources, and exactly what the code calls.

An IAM action is the service prefix plus the API operation name, so botocore's service models give
the real names; the few actions that are not operation names are mapped explicitly (``KNOWN``).
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

# IAM prefix -> botocore service model
SERVICES = {
    "kinesis": "kinesis",
    "firehose": "firehose",
    "s3": "s3",
    "logs": "logs",
    "ecr": "ecr",
    "secretsmanager": "secretsmanager",
    "ssm": "ssm",
    "kms": "kms",
    "sts": "sts",
}
# actions whose name is not an operation name: action -> the operation it authorises
KNOWN = {
    "s3:ListBucket": "ListObjectsV2",
    "s3:ListBucketMultipartUploads": "ListMultipartUploads",
}
# the only statement allowed a "*" resource: the action supports no resource-level permission
NO_RESOURCE_LEVEL = {"ecr:GetAuthorizationToken"}

POLICIES = [
    "iam/task-role-policy.json",
    "iam/execution-role-policy.json",
    "iam/jobs-task-role-policy.json",
    "iam/jobs-execution-role-policy.json",
    "iam/firehose-role-policy.json",
]
TRUST = ["iam/ecs-tasks-trust-policy.json", "iam/firehose-trust-policy.json"]


@cache
def operations(service: str) -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_service_model(service).operation_names)


def listify(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def actions(document: dict[str, Any]) -> set[str]:
    return {a for s in statements(document) for a in listify(s["Action"])}


def resources_of(document: dict[str, Any], action: str) -> set[str]:
    return {r for s in statements(document) if action in listify(s["Action"]) for r in listify(s["Resource"])}


def real_action(action: str) -> bool:
    prefix, _, name = action.partition(":")
    if action in KNOWN:
        return KNOWN[action] in operations(SERVICES[prefix])
    return prefix in SERVICES and name in operations(SERVICES[prefix])


def s3_object_arn(uri: str) -> str:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return f"arn:aws:s3:::{bucket}/{prefix}/*"


def task_env(rendered: dict[str, Any], path: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in rendered[path]["containerDefinitions"][0]["environment"]}


def task_secrets(rendered: dict[str, Any], path: str) -> set[str]:
    return {e["valueFrom"] for e in rendered[path]["containerDefinitions"][0]["secrets"]}


@pytest.mark.parametrize("path", POLICIES)
def test_policy_is_valid_iam_with_real_actions_only(rendered: dict[str, Any], path: str) -> None:
    document = rendered[path]
    IAMPolicyDocumentValidator(json.dumps(document)).validate()
    for statement in statements(document):
        assert statement["Effect"] == "Allow"
        for action in listify(statement["Action"]):
            assert "*" not in action and "?" not in action, f"{path}: wildcard action {action}"
            assert real_action(action), f"{path}: {action} is not an action of its service"


@pytest.mark.parametrize("path", POLICIES)
def test_no_wildcard_resources_where_the_arn_is_known(
    rendered: dict[str, Any], example_vars: dict[str, Any], path: str
) -> None:
    for statement in statements(rendered[path]):
        granted = listify(statement["Action"])
        for resource in listify(statement["Resource"]):
            if resource == "*":
                assert set(granted) <= NO_RESOURCE_LEVEL, f"{path}: {granted} on every resource"
                continue
            arn = resource.split(":")
            assert arn[0] == "arn" and arn[1] == "aws", resource
            service = arn[2]
            assert {a.split(":")[0] for a in granted} == {service}, f"{path}: {granted} on {resource}"
            if service != "s3":
                assert arn[3] == example_vars["REGION"] and arn[4] == example_vars["ACCOUNT_ID"], resource
            # the only wildcards: every object under one prefix, every stream of one log group
            unspecific = resource.replace("/*", "").removesuffix(":*")
            assert "*" not in unspecific and "?" not in unspecific, f"{path}: {resource}"


@pytest.mark.parametrize("path", TRUST)
def test_trust_policies_are_valid_and_scoped_to_the_account(
    rendered: dict[str, Any], example_vars: dict[str, Any], path: str
) -> None:
    document = rendered[path]
    IAMTrustPolicyDocumentValidator(json.dumps(document)).validate()
    (statement,) = statements(document)
    assert real_action(statement["Action"])
    assert example_vars["ACCOUNT_ID"] in json.dumps(statement["Condition"])


def test_the_service_task_role_has_only_what_the_service_uses(rendered: dict[str, Any]) -> None:
    policy = rendered["iam/task-role-policy.json"]
    env = task_env(rendered, "task-definition.json")
    assert actions(policy) == {
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
        "firehose:PutRecordBatch",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
    }
    stream = f"arn:aws:kinesis:eu-west-1:123456789012:stream/{env['RECSYS_STREAM']}"
    for action in ("DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords"):
        assert resources_of(policy, f"kinesis:{action}") == {stream}
    delivery = f"arn:aws:firehose:eu-west-1:123456789012:deliverystream/{env['RECSYS_DELIVERY_STREAM']}"
    assert resources_of(policy, "firehose:PutRecordBatch") == {delivery}
    assert resources_of(policy, "s3:GetObject") == {s3_object_arn(env["RECSYS_ARTIFACTS"])}
    assert resources_of(policy, "s3:PutObject") == {s3_object_arn(env["RECSYS_DEAD_LETTERS"])}
    bucket, _, prefix = env["RECSYS_ARTIFACTS"].removeprefix("s3://").partition("/")
    (listing,) = [s for s in statements(policy) if "s3:ListBucket" in listify(s["Action"])]
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}


def test_the_jobs_task_role_reads_and_writes_only_the_lake_and_artifacts(rendered: dict[str, Any]) -> None:
    policy = rendered["iam/jobs-task-role-policy.json"]
    env = task_env(rendered, "task-definition-jobs.json")
    assert actions(policy) == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListBucket",
        "s3:DeleteObject",
    }
    # the ETL removes the files of a failed run and old runs; nothing deletes artifacts
    assert resources_of(policy, "s3:DeleteObject") == {s3_object_arn(env["RECSYS_LAKE"])}
    objects = {s3_object_arn(env["RECSYS_LAKE"]), s3_object_arn(env["RECSYS_ARTIFACTS"])}
    for action in ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"):
        assert resources_of(policy, action) == objects
    # unconditioned on purpose: S3 answers a HeadObject of a missing key with 404 only to a caller
    # allowed to list the bucket (the request carries no s3:prefix), and ObjectStore.exists() needs 404
    buckets = {
        "arn:aws:s3:::" + uri.removeprefix("s3://").split("/")[0]
        for uri in (env["RECSYS_LAKE"], env["RECSYS_ARTIFACTS"])
    }
    assert resources_of(policy, "s3:ListBucket") == buckets


@pytest.mark.parametrize(
    ("policy_path", "task_path"),
    [
        ("iam/execution-role-policy.json", "task-definition.json"),
        ("iam/jobs-execution-role-policy.json", "task-definition-jobs.json"),
    ],
)
def test_execution_roles_pull_log_and_read_exactly_their_task_secrets(
    rendered: dict[str, Any], policy_path: str, task_path: str
) -> None:
    policy, task = rendered[policy_path], rendered[task_path]
    box = task["containerDefinitions"][0]
    assert actions(policy) == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
    }
    assert resources_of(policy, "secretsmanager:GetSecretValue") == task_secrets(rendered, task_path)
    repository = box["image"].split("/", 1)[1].split(":")[0].split("@")[0]
    assert resources_of(policy, "ecr:BatchGetImage") == {
        f"arn:aws:ecr:eu-west-1:123456789012:repository/{repository}"
    }
    group = box["logConfiguration"]["options"]["awslogs-group"]
    for resource in resources_of(policy, "logs:PutLogEvents"):
        assert re.fullmatch(
            rf"arn:aws:logs:eu-west-1:123456789012:log-group:{re.escape(group)}(:\*)?", resource
        )


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


def test_every_kinesis_and_firehose_call_of_the_consumer_is_granted(
    root: Path, rendered: dict[str, Any]
) -> None:
    """The consumer's code (not its local-stack setup or the demo producer) against the task role."""
    wanted = {_snake(op): f"{prefix}:{op}" for prefix in ("kinesis", "firehose") for op in operations(prefix)}
    consumer = root / "consumer"
    paths = [p for p in consumer.rglob("*.py") if p.name not in {"setup.py", "producer.py"}]
    assert paths, "no consumer code found"
    called = _operation_names_in(paths, wanted)
    assert called, "the consumer names no Kinesis/Firehose operation: the scan is broken"
    granted = actions(rendered["iam/task-role-policy.json"])
    assert called - granted == set()
