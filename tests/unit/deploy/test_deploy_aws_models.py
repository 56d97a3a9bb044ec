"""Every rendered request is valid input for its AWS API, per the service models shipped in botocore.

botocore's ParamValidator checks required members, unknown members, types and ranges; it does not
check enumerations, so ``enum_problems`` does (``awsvpc``, ``FARGATE``, ``TargetTrackingScaling``...).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import botocore.session
import pytest
from botocore.model import OperationModel, Shape
from botocore.validate import ParamValidator

# rendered file (or folder/) -> (botocore service, operation) that takes it as --cli-input-json
OPERATIONS = {
    "task-definition.json": ("ecs", "RegisterTaskDefinition"),
    "task-definition-jobs.json": ("ecs", "RegisterTaskDefinition"),
    "service.json": ("ecs", "CreateService"),
    "run-task/": ("ecs", "RunTask"),
    "autoscaling/scalable-target.json": ("application-autoscaling", "RegisterScalableTarget"),
    "autoscaling/policy-": ("application-autoscaling", "PutScalingPolicy"),
    "alarms/": ("cloudwatch", "PutMetricAlarm"),
    "firehose/delivery-stream.json": ("firehose", "CreateDeliveryStream"),
}


@cache
def operation(service: str, name: str) -> OperationModel:
    return botocore.session.get_session().get_service_model(service).operation_model(name)


def operation_for(path: str) -> tuple[str, str] | None:
    for key, op in OPERATIONS.items():
        if path == key or (key.endswith(("/", "-")) and path.startswith(key)):
            return op
    return None


def enum_problems(value: Any, shape: Shape, where: str = "") -> list[str]:
    problems: list[str] = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, child in value.items():
            if key in shape.members:
                problems += enum_problems(child, shape.members[key], f"{where}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, child in enumerate(value):
            problems += enum_problems(child, shape.member, f"{where}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, child in value.items():
            problems += enum_problems(key, shape.key, f"{where}<key>")
            problems += enum_problems(child, shape.value, f"{where}[{key}]")
    elif shape.type_name == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        problems.append(f"{where}: {value!r} is not one of {shape.enum}")
    return problems


def validation_report(document: dict[str, Any], op: OperationModel) -> list[str]:
    report = ParamValidator().validate(document, op.input_shape)
    problems = [report.generate_report()] if report.has_errors() else []
    return problems + enum_problems(document, op.input_shape)


def test_every_rendered_file_outside_iam_has_an_operation(rendered: dict[str, Any]) -> None:
    unmapped = [p for p in rendered if not p.startswith("iam/") and operation_for(p) is None]
    assert unmapped == []


@pytest.mark.parametrize(
    "path",
    [
        "task-definition.json",
        "task-definition-jobs.json",
        "service.json",
        "run-task/migrate.json",
        "run-task/etl.json",
        "run-task/train.json",
        "run-task/load-vectors.json",
        "autoscaling/scalable-target.json",
        "autoscaling/policy-cpu.json",
        "autoscaling/policy-lag.json",
        "firehose/delivery-stream.json",
    ],
)
def test_rendered_request_matches_the_api_model(rendered: dict[str, Any], path: str) -> None:
    mapped = operation_for(path)
    assert mapped is not None
    assert validation_report(rendered[path], operation(*mapped)) == []


def test_every_alarm_matches_put_metric_alarm(rendered: dict[str, Any]) -> None:
    alarms = [p for p in rendered if p.startswith("alarms/")]
    assert len(alarms) >= 5
    for path in alarms:
        assert validation_report(rendered[path], operation("cloudwatch", "PutMetricAlarm")) == [], path


@pytest.mark.parametrize(
    ("path", "mutate", "complaint"),
    [
        ("task-definition.json", lambda d: d.update(networkMode="vpc"), "networkMode"),
        ("task-definition.json", lambda d: d["containerDefinitions"][0].update(stopTimeut=30), "stopTimeut"),
        (
            "task-definition.json",
            lambda d: d["containerDefinitions"][0].update(stopTimeout="30"),
            "stopTimeout",
        ),
        ("service.json", lambda d: d.pop("serviceName"), "serviceName"),
        ("autoscaling/policy-lag.json", lambda d: d.update(PolicyType="TargetTracking"), "PolicyType"),
    ],
)
def test_the_validation_catches_a_broken_request(
    rendered: dict[str, Any], path: str, mutate: Any, complaint: str
) -> None:
    document = copy.deepcopy(rendered[path])
    mutate(document)
    mapped = operation_for(path)
    assert mapped is not None
    problems = validation_report(document, operation(*mapped))
    assert problems and complaint in "\n".join(problems)
