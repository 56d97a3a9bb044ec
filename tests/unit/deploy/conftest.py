"""Fixtures for the deployment tests: the CloudFormation stack (deploy/ecs/stack.yaml) evaluated for a
set of parameter values, the way CloudFormation would before it creates anything.

``evaluate`` checks the parameters against their constraints and the template's Rules, decides the
Conditions, drops the resources they leave out and resolves the intrinsic functions. A resource's
``Ref`` and ``Fn::GetAtt`` become values of the shape AWS gives them (names, ARNs, ids), made up from
the logical id, so that the tests can follow every reference. This is a test aid, not a renderer:
the stack is deployed as it is, by ``aws cloudformation deploy``.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[3]
STACK = ROOT / "deploy" / "ecs" / "stack.yaml"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
STACK_NAME = "recsys"

# what the tests pass for the parameters that have no default (docs/operations.md passes the same kind)
REQUIRED = {
    "VpcId": "vpc-0a1b2c3d4e5f60718",
    "TaskSubnetIds": "subnet-0a1b2c3d4e5f60718,subnet-0a1b2c3d4e5f60719",
    "LoadBalancerSubnetIds": "subnet-0a1b2c3d4e5f60720,subnet-0a1b2c3d4e5f60721",
    "IngressCidr": "203.0.113.0/24",
    "SourceUrlSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:recsys/source-url-MnOpQr",
    "SourceDatabaseCidr": "10.0.8.0/24",
}
DEPLOYED = {**REQUIRED, "ImageTag": "0.1.0"}  # a stack with an image: tasks, service, pipeline


class StackError(Exception):
    """Parameters CloudFormation would refuse, with every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


NO_VALUE = object()


@dataclass
class Stack:
    """The stack as CloudFormation would create it for one set of parameters."""

    parameters: dict[str, Any]
    conditions: dict[str, bool]
    resources: dict[str, dict[str, Any]]  # logical id -> {"Type", "Properties"} (resolved)
    outputs: dict[str, Any]

    def props(self, logical_id: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.resources[logical_id].get("Properties", {})
        return properties

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v.get("Properties", {}) for k, v in self.resources.items() if v["Type"] == resource_type}

    types: dict[str, str]  # every logical id of the template -> its type

    def ref(self, logical_id: str) -> Any:
        return _ref_value(logical_id, self.types[logical_id])

    def att(self, logical_id: str, attribute: str) -> Any:
        return _att_value(logical_id, self.types[logical_id], attribute)


def _name(logical_id: str) -> str:
    return f"{STACK_NAME}-{logical_id}-ABCDEF012345".lower()


def _arn(service: str, resource: str, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:aws:{service}:{region}:{account}:{resource}"


def _ref_value(logical_id: str, kind: str) -> Any:
    name = _name(logical_id)
    refs: dict[str, Callable[[], Any]] = {
        "AWS::ECS::TaskDefinition": lambda: _arn("ecs", f"task-definition/{name}:1"),
        "AWS::SecretsManager::Secret": lambda: _arn("secretsmanager", f"secret:{logical_id}-AbCdEf"),
        "AWS::SNS::Topic": lambda: _arn("sns", name),
        "AWS::StepFunctions::StateMachine": lambda: _arn("states", f"stateMachine:{name}"),
        "AWS::ElasticLoadBalancingV2::LoadBalancer": lambda: _arn(
            "elasticloadbalancing", f"loadbalancer/app/{logical_id[:20]}/0123456789abcdef"
        ),
        "AWS::ElasticLoadBalancingV2::TargetGroup": lambda: _arn(
            "elasticloadbalancing", f"targetgroup/{logical_id[:20]}/0123456789abcdef"
        ),
        "AWS::ElasticLoadBalancingV2::Listener": lambda: _arn(
            "elasticloadbalancing", f"listener/app/{logical_id[:20]}/0123456789abcdef/fedcba9876543210"
        ),
        "AWS::Logs::LogGroup": lambda: f"/{STACK_NAME}/{logical_id}",
        "AWS::EC2::SecurityGroup": lambda: "sg-" + hashlib.md5(logical_id.encode()).hexdigest()[:17],
        "AWS::ServiceDiscovery::PrivateDnsNamespace": lambda: "ns-0123456789abcdef",
        "AWS::ApplicationAutoScaling::ScalableTarget": lambda: (
            f"service/{logical_id}|ecs:service:DesiredCount|ecs"
        ),
    }
    return refs.get(kind, lambda: name)()


def _att_value(logical_id: str, kind: str, attribute: str) -> Any:
    name = _ref_value(logical_id, kind)
    atts: dict[tuple[str, str], Callable[[], Any]] = {
        ("AWS::Kinesis::Stream", "Arn"): lambda: _arn("kinesis", f"stream/{name}"),
        ("AWS::KinesisFirehose::DeliveryStream", "Arn"): lambda: _arn("firehose", f"deliverystream/{name}"),
        ("AWS::S3::Bucket", "Arn"): lambda: f"arn:aws:s3:::{name}",
        ("AWS::Logs::LogGroup", "Arn"): lambda: _arn("logs", f"log-group:{name}:*"),
        ("AWS::ECR::Repository", "Arn"): lambda: _arn("ecr", f"repository/{name}"),
        ("AWS::ECR::Repository", "RepositoryUri"): lambda: f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}",
        ("AWS::IAM::Role", "Arn"): lambda: f"arn:aws:iam::{ACCOUNT}:role/{name}",
        ("AWS::ECS::Cluster", "Arn"): lambda: _arn("ecs", f"cluster/{name}"),
        ("AWS::ECS::Service", "Name"): lambda: name,
        ("AWS::EC2::SecurityGroup", "GroupId"): lambda: name,
        ("AWS::RDS::DBInstance", "Endpoint.Address"): lambda: (
            f"{name}.cabcdefghijk.{REGION}.rds.amazonaws.com"
        ),
        ("AWS::RDS::DBInstance", "Endpoint.Port"): lambda: "5432",
        ("AWS::ElasticLoadBalancingV2::LoadBalancer", "DNSName"): lambda: (
            f"{logical_id}.{REGION}.elb.amazonaws.com"
        ),
        ("AWS::ElasticLoadBalancingV2::LoadBalancer", "LoadBalancerFullName"): lambda: name.split(
            "loadbalancer/"
        )[1],
        ("AWS::ElasticLoadBalancingV2::TargetGroup", "TargetGroupFullName"): lambda: name.split(":")[-1],
        ("AWS::ServiceDiscovery::Service", "Arn"): lambda: _arn("servicediscovery", "service/srv-0123456789"),
    }
    key = (kind, attribute)
    if key not in atts:
        raise KeyError(f"the test stack knows no {attribute} of a {kind} ({logical_id})")
    return atts[key]()


def _check_parameters(declared: dict[str, Any], given: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    problems = [f"{name}: not a parameter of the stack" for name in given if name not in declared]
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            raw = given[name]
        elif "Default" in spec:
            raw = str(spec["Default"])
        else:
            problems.append(f"{name}: must have values")
            continue
        kind = spec["Type"]
        items = raw.split(",") if kind.startswith("List<") or kind == "CommaDelimitedList" else [raw]
        if kind == "CommaDelimitedList" and raw == "":
            items = [""]
        for item in items:
            if "AllowedValues" in spec and item not in [str(v) for v in spec["AllowedValues"]]:
                problems.append(f"{name}: {item!r} is not one of {spec['AllowedValues']}")
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], item):
                problems.append(f"{name}: {item!r} does not match {spec['AllowedPattern']}")
            if kind == "Number":
                number = float(item)
                if "MinValue" in spec and number < float(spec["MinValue"]):
                    problems.append(f"{name}: {item} is below {spec['MinValue']}")
                if "MaxValue" in spec and number > float(spec["MaxValue"]):
                    problems.append(f"{name}: {item} is above {spec['MaxValue']}")
        values[name] = items if kind.startswith("List<") or kind == "CommaDelimitedList" else raw
    return values, problems


class _Evaluator:
    def __init__(self, template: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.template = template
        self.parameters = parameters
        self.types = {k: v["Type"] for k, v in template["Resources"].items()}
        self.pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::StackName": STACK_NAME,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        self.conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self.conditions[name]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return _ref_value(name, self.types[name])

    def sub(self, text: str, extra: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in extra:
                return str(extra[key])
            if "." in key and key.split(".")[0] in self.types:
                logical, attribute = key.split(".", 1)
                return str(_att_value(logical, self.types[logical], attribute))
            return str(self.ref(key))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return _att_value(logical, self.types[logical], attribute)
            if key == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))
                return self.sub(text, extra)
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if key == "Fn::Join":
                return arg[0].join(str(v) for v in self.value(arg[1]))
            if key == "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            if key == "Fn::Split":
                return str(self.value(arg[1])).split(arg[0])
            if key == "Fn::FindInMap":
                table, first, second = (self.value(a) for a in arg)
                return self.template["Mappings"][table][first][second]
            if key == "Fn::Equals":
                left, right = (self.value(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::And":
                return all(self.value(a) for a in arg)
            if key == "Fn::Or":
                return any(self.value(a) for a in arg)
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Contains":
                haystack, needle = (self.value(a) for a in arg)
                return str(needle) in [str(v) for v in haystack]
        out = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}


def load_template() -> dict[str, Any]:
    template, matches = decode(str(STACK))
    assert not matches, matches
    assert template is not None
    return dict(template)


def evaluate(given: dict[str, str], template: dict[str, Any] | None = None) -> Stack:
    """The stack for ``given`` parameter values; raises ``StackError`` where CloudFormation would refuse."""
    template = template or load_template()
    parameters, problems = _check_parameters(template["Parameters"], given)
    if problems:
        raise StackError(problems)
    evaluator = _Evaluator(template, parameters)
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not evaluator.value(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not evaluator.value(assertion["Assert"]):
                problems.append(f"{name}: {assertion['AssertDescription']}")
    if problems:
        raise StackError(problems)
    conditions = {name: evaluator.condition(name) for name in template["Conditions"]}
    resources: dict[str, dict[str, Any]] = {}
    for logical_id, resource in template["Resources"].items():
        if "Condition" in resource and not conditions[resource["Condition"]]:
            continue
        resources[logical_id] = {
            "Type": resource["Type"],
            "Properties": evaluator.value(resource.get("Properties", {})),
            "DependsOn": resource.get("DependsOn", []),
            "Metadata": resource.get("Metadata", {}),
        }
    outputs = {
        name: evaluator.value(output["Value"])
        for name, output in template["Outputs"].items()
        if "Condition" not in output or conditions[output["Condition"]]
    }
    return Stack(parameters, conditions, resources, outputs, evaluator.types)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def top_packages() -> list[str]:
    """The project's top-level packages, as pyproject.toml lists them for the wheel."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return sorted({name.split(".")[0] for name in listed})


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def stack(template: dict[str, Any]) -> Stack:
    """The stack with its defaults and an image: the sidecar layout, a database of its own."""
    return evaluate(DEPLOYED, template)


@pytest.fixture(scope="session")
def single(template: dict[str, Any]) -> Stack:
    """The one-container layout (`recsys run`)."""
    return evaluate({**DEPLOYED, "TaskLayout": "single"}, template)


@pytest.fixture(scope="session")
def evaluate_stack() -> Callable[[dict[str, str]], Stack]:
    """``evaluate_stack(parameters)``: the stack for those values (``StackError`` when refused)."""
    return evaluate


def shape(service: str, name: str) -> Shape:
    model = botocore.session.get_session().get_service_model(service)
    return model.shape_for(name)


def to_api(value: Any, target: Shape) -> Any:
    """A CloudFormation property value as the AWS API takes it: CloudFormation spells the API's
    members in PascalCase (``ContainerDefinitions`` for ``containerDefinitions``); the member
    names come from botocore's model of the API, matched without case."""
    if target.type_name == "structure" and isinstance(value, dict):
        members = {name.lower(): name for name in target.members}
        out = {}
        for key, child in value.items():
            name = members.get(key.lower(), key)
            out[name] = to_api(child, target.members[name]) if name in target.members else child
        return out
    if target.type_name == "list" and isinstance(value, list):
        return [to_api(item, target.member) for item in value]
    if target.type_name == "map" and isinstance(value, dict):
        return {k: to_api(v, target.value) for k, v in value.items()}
    if target.type_name in {"integer", "long"} and isinstance(value, str) and value.isdigit():
        return int(value)
    if target.type_name == "boolean" and value in {"true", "false"}:
        return value == "true"
    return value


@pytest.fixture(scope="session")
def api_shape() -> Callable[[str, str], Shape]:
    return shape


@pytest.fixture(scope="session")
def as_api() -> Callable[[Any, Shape], Any]:
    return to_api


@pytest.fixture(scope="session")
def run_container(single: Stack) -> dict[str, Any]:
    """The `recsys run` container as ECS's RegisterTaskDefinition takes it (camelCase members)."""
    (container,) = single.props("ServiceTaskDefinition")["ContainerDefinitions"]
    converted: dict[str, Any] = to_api(container, shape("ecs", "ContainerDefinition"))
    return converted


class ProbeTarget:
    """What a health-check command probes: one path answered with ``status``, any other with 404."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.status = 200


@contextmanager
def probe_target(path: str) -> Iterator[ProbeTarget]:
    """A local HTTP server standing in for the container's port, for running a health check."""
    target = ProbeTarget(0, path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(target.status if self.path == target.path else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    target.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
