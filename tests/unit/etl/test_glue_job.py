"""The Glue job definition (deploy/glue/etl-job.yaml): valid CloudFormation (cfn-lint), valid Glue API
input (botocore's CreateJob / CreateConnection models), a least-privilege role, and arguments the job
script understands, with the libraries its imports need."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from etl.config import EtlSettings

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "deploy" / "glue" / "etl-job.yaml"
SAMPLE = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "eu-west-1",
    "AWS::Partition": "aws",
    "JobName": "recsys-etl",
    "CodeBucket": "recsys-code",
    "CodePrefix": "glue/recsys-etl",
    "LakeBucket": "recsys-lake",
    "LakePrefix": "lake",
    "SourceUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:recsys/source-url-AbCdEf",
    "DatabaseUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:recsys/db-url-GhIjKl",
    "SubnetId": "subnet-0123456789abcdef0",
    "AvailabilityZone": "eu-west-1a",
    "SecurityGroupId": "sg-0123456789abcdef0",
    "WorkerType": "G.1X",
    "NumberOfWorkers": "2",  # a Ref to a Number parameter is a string
    "ReadPartitions": "8",
    "RetentionDays": "30",
    "Connection": "recsys-etl-network",
}
# what Glue 5.0 runs the script with: Spark, and the AWS SDK and Arrow it ships
GLUE_PROVIDED = {"pyspark", "py4j", "boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six"}
GLUE_PROVIDED |= {"urllib3", "pyarrow", "numpy"}
# optional imports of those (pyspark's cloudpickle and psutil, urllib3's certifi), there on Glue
GLUE_PROVIDED |= {"cloudpickle", "psutil", "certifi"}


@cache
def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    return dict(cfn_yaml.load(str(TEMPLATE)))


def resolve(value: Any) -> Any:
    """The template's value with intrinsic functions filled from SAMPLE (what CloudFormation sends)."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return SAMPLE[value["Ref"]]
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(SAMPLE[m.group(1)]), value["Fn::Sub"])
        if set(value) == {"Fn::GetAtt"}:
            return "arn:aws:iam::123456789012:role/recsys-etl"
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


def validate(service: str, operation: str, params: dict[str, Any]) -> None:
    model = botocore.session.get_session().get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_cfn_lint_passes() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    done = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_job_and_its_connection_are_valid_glue_api_input() -> None:
    resources = template()["Resources"]
    job = resolve(resources["Job"]["Properties"])
    job["NumberOfWorkers"] = int(job["NumberOfWorkers"])  # CloudFormation converts the Number
    # CloudFormation's AWS::Glue::Job properties are CreateJob's members (AllocatedCapacity aside)
    validate("glue", "CreateJob", job)
    assert job["GlueVersion"] == "5.0" and job["Command"]["Name"] == "glueetl"
    assert job["Connections"]["Connections"] == [SAMPLE["Connection"]]
    connection = resolve(resources["Connection"]["Properties"])
    validate("glue", "CreateConnection", connection)
    assert connection["ConnectionInput"]["ConnectionType"] == "NETWORK"
    # every DefaultArguments value is a string, as the API wants (Glue passes them as argv)
    assert all(isinstance(v, str) for v in job["DefaultArguments"].values())


def test_the_role_is_least_privilege() -> None:
    role = template()["Resources"]["Role"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"]["Service"] for s in trust] == ["glue.amazonaws.com"]
    statements = resolve(role["Policies"][0]["PolicyDocument"]["Statement"])
    assert "ManagedPolicyArns" not in role  # no AWSGlueServiceRole and its s3:* on aws-glue-* buckets
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert statement["Effect"] == "Allow" and all("*" not in a for a in actions), statement
        if "*" in resources:  # only calls that take no resource, and metrics only in Glue's namespace
            assert all(a.startswith("ec2:Describe") or a == "cloudwatch:PutMetricData" for a in actions)
            if "cloudwatch:PutMetricData" in actions:
                assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Glue"}}
        for resource in resources:
            if resource.startswith("arn:aws:s3:::"):
                assert resource in {
                    "arn:aws:s3:::recsys-code/glue/recsys-etl/*",
                    "arn:aws:s3:::recsys-lake",
                    "arn:aws:s3:::recsys-lake/lake/*",
                }, resource
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["ListTheLake"]["Condition"] == {"StringLike": {"s3:prefix": ["lake/*"]}}
    assert by_sid["ReadTheDatabaseUrls"]["Resource"] == [
        SAMPLE["SourceUrlSecretArn"],
        SAMPLE["DatabaseUrlSecretArn"],
    ]


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_job_arguments_are_the_scripts_and_its_libraries_are_pinned_as_the_lock() -> None:
    pytest.importorskip("pyspark")
    from etl.spark_job import _parser

    arguments = resolve(template()["Resources"]["Job"]["Properties"]["DefaultArguments"])
    argv = [item for pair in arguments.items() for item in pair]
    ours, glue = _parser().parse_known_args(argv)
    glue_keys = {a for a in glue if a.startswith("--")}
    assert glue_keys == {
        "--job-language",
        "--enable-metrics",
        "--enable-continuous-cloudwatch-log",
        "--extra-py-files",
        "--additional-python-modules",
        "--extra-jars",
    }
    assert ours.lake == "s3://recsys-lake/lake" and ours.source_url_secret == SAMPLE["SourceUrlSecretArn"]
    EtlSettings.model_validate(json.loads(ours.etl_settings))
    locked = _pins(ROOT / "requirements.lock")
    modules = dict(m.split("==") for m in arguments["--additional-python-modules"].split(","))
    for name, version in modules.items():
        assert locked[name.lower().replace("_", "-")] == version, name


def _requirements(dist: str, seen: set[str]) -> set[str]:
    """``dist`` and everything it requires (installed ones), by normalised name."""
    name = dist.lower().replace("_", "-")
    if name in seen:
        return seen
    seen.add(name)
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        return seen
    for requirement in requires:
        if "extra ==" in requirement:
            continue
        _requirements(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0], seen)
    return seen


def test_the_job_script_imports_only_what_the_glue_job_brings() -> None:
    """Our packages in recsys-etl.zip (etl, infra, core); other libraries from Glue or the pins."""
    pytest.importorskip("pyspark")
    probe = (
        "import json, sys; import etl.spark_job, infra.suppression; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    ours = {"recsys", "core", "infra", "model_store", "etl", "consumer", "service", "compliance", "sql"}
    assert loaded & ours <= {"etl", "infra", "core"}
    arguments = resolve(template()["Resources"]["Job"]["Properties"]["DefaultArguments"])
    allowed: set[str] = set()
    for dist in GLUE_PROVIDED | {
        m.split("==")[0] for m in arguments["--additional-python-modules"].split(",")
    }:
        _requirements(dist, allowed)
    owners = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    third_party = {m for m in loaded - ours - stdlib if not m.startswith("_") and m in owners}
    missing = {
        m: owners[m] for m in third_party if not {d.lower().replace("_", "-") for d in owners[m]} & allowed
    }
    assert not missing, f"the job script imports libraries the Glue job does not install: {missing}"
