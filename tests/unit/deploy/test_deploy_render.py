"""The template renderer: fills every placeholder, refuses what is missing, unknown or inconsistent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXPECTED_FILES = {
    "task-definition.json",
    "task-definition-jobs.json",
    "service.json",
    "autoscaling/scalable-target.json",
    "autoscaling/policy-cpu.json",
    "autoscaling/policy-lag.json",
    "run-task/migrate.json",
    "run-task/etl.json",
    "run-task/train.json",
    "run-task/load-vectors.json",
    "iam/ecs-tasks-trust-policy.json",
    "iam/task-role-policy.json",
    "iam/execution-role-policy.json",
    "iam/jobs-task-role-policy.json",
    "iam/jobs-execution-role-policy.json",
    "iam/firehose-trust-policy.json",
    "iam/firehose-role-policy.json",
    "firehose/delivery-stream.json",
}


def test_every_template_is_rendered_without_leftovers(rendered: dict[str, Any]) -> None:
    assert set(rendered) >= EXPECTED_FILES
    for name, document in rendered.items():
        text = json.dumps(document)
        assert "${" not in text.replace("${aws:", ""), name
        assert "__when__" not in text, name


def test_typed_placeholders_keep_their_types(rendered: dict[str, Any], example_vars: dict[str, Any]) -> None:
    container = rendered["task-definition.json"]["containerDefinitions"][0]
    assert container["portMappings"][0]["containerPort"] == 8000
    assert {"name": "RECSYS_PORT", "value": "8000"} in container["environment"]
    assert isinstance(container["stopTimeout"], int)
    vpc = rendered["service.json"]["networkConfiguration"]["awsvpcConfiguration"]
    assert vpc["subnets"] == example_vars["SUBNET_IDS"]
    assert rendered["service.json"]["desiredCount"] == 2


def _secrets_statements(document: dict[str, Any]) -> dict[str, list[str]]:
    return {s["Sid"]: s["Action"] for s in document["Statement"]}


def test_conditional_statements_follow_the_secret_store_and_the_kms_key(
    render: ModuleType, example_vars: dict[str, Any], rendered: dict[str, Any]
) -> None:
    default = _secrets_statements(rendered["iam/execution-role-policy.json"])
    assert default["ReadTheSecrets"] == ["secretsmanager:GetSecretValue"]
    assert "ReadTheParameters" not in default and "DecryptTheSecrets" not in default

    ssm_vars = dict(
        example_vars, SECRETS_STORE="ssm", KMS_KEY_ARN="arn:aws:kms:eu-west-1:123456789012:key/k-1"
    )
    for name in ("DATABASE_URL", "API_TOKEN", "SOURCE_URL"):
        ssm_vars[f"{name}_SECRET_ARN"] = f"arn:aws:ssm:eu-west-1:123456789012:parameter/recsys/{name.lower()}"
    policy = render.render_dir(ssm_vars)[Path("iam/execution-role-policy.json")]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert "ReadTheSecrets" not in statements
    assert statements["ReadTheParameters"]["Action"] == ["ssm:GetParameters"]
    assert statements["DecryptTheSecrets"]["Resource"] == "arn:aws:kms:eu-west-1:123456789012:key/k-1"
    assert statements["DecryptTheSecrets"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"}
    }


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"REGION": None}, "REGION: not filled in"),
        ({"ACCOUNT_ID": "12345"}, "ACCOUNT_ID: '12345' does not match"),
        ({"SUBNET_IDS": "subnet-0a1b2c3d"}, "SUBNET_IDS: expected a list"),
        ({"SUBNET_IDS": []}, "SUBNET_IDS: the list is empty"),
        ({"STOP_TIMEOUT_S": 20}, "STOP_TIMEOUT_S: 20 is below the minimum 30"),
        ({"CPU": "1000"}, "CPU: '1000' is not one of"),
        ({"DESIRED_COUNT": True}, "DESIRED_COUNT: expected an integer"),
        ({"STREAM_NAMES": "typo"}, "STREAM_NAMES: not a known variable"),
        (
            {"IMAGE": "999999999999.dkr.ecr.eu-west-1.amazonaws.com/recsys:1"},
            "IMAGE: '999999999999.dkr.ecr.eu-west-1.amazonaws.com/recsys:1' is not in ACCOUNT_ID",
        ),
        (
            {"SECRETS_STORE": "ssm"},
            "DATABASE_URL_SECRET_ARN: a secretsmanager ARN but SECRETS_STORE is 'ssm'",
        ),
        ({"TARGET_GROUP_DIMENSION": "targetgroup/other/0123456789abcdef"}, "TARGET_GROUP_DIMENSION"),
        ({"MEMORY": "1024"}, "MEMORY: 1024 MiB is not a Fargate size for CPU=1024"),
        ({"JOBS_CPU": "4096", "JOBS_MEMORY": "4096"}, "JOBS_MEMORY: 4096 MiB is not a Fargate size"),
    ],
)
def test_bad_variables_are_refused_with_a_reason(
    render: ModuleType, example_vars: dict[str, Any], change: dict[str, Any], complaint: str
) -> None:
    given = {k: v for k, v in {**example_vars, **change}.items() if v is not None}
    with pytest.raises(render.RenderError) as caught:
        render.render_dir(given)
    assert any(problem.startswith(complaint) for problem in caught.value.problems), caught.value.problems


def test_a_template_naming_an_undeclared_variable_is_refused(
    render: ModuleType, example_vars: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"a": ["${NOT_DECLARED}", "pre-${REGION}-${ALSO_NOT}"]}))
    with pytest.raises(render.RenderError) as caught:
        render.render_dir(example_vars, templates=tmp_path)
    assert caught.value.problems == [
        "x.json.a[0]: unknown variable ${NOT_DECLARED}",
        "x.json.a[1]: unknown variable ${ALSO_NOT}",
    ]


def test_iam_policy_variables_are_left_alone(render: ModuleType) -> None:
    problems: list[str] = []
    node = {"Resource": "arn:aws:s3:::b/${aws:username}/*", "Port": "${PORT}", "Text": "${PORT:string}"}
    out = render.render_value(node, {"PORT": 8000}, "t", problems)
    assert out == {"Resource": "arn:aws:s3:::b/${aws:username}/*", "Port": 8000, "Text": "8000"}
    assert problems == []


def _run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.ecs.render", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line_writes_json_for_the_aws_cli(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run_cli(root, "--vars", str(root / "deploy/ecs/vars.example.json"), str(out))
    assert done.returncode == 0, done.stderr
    written = {str(p.relative_to(out)) for p in out.rglob("*.json")}
    assert written >= EXPECTED_FILES
    task = json.loads((out / "task-definition.json").read_text())
    assert task["family"] == "recsys"


def test_command_line_refuses_unfilled_variables_with_exit_2_and_writes_nothing(
    root: Path, tmp_path: Path
) -> None:
    given = json.loads((root / "deploy/ecs/vars.example.json").read_text())
    del given["ACCOUNT_ID"], given["IMAGE"]
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(given))
    out = tmp_path / "out"
    done = _run_cli(root, "--vars", str(vars_file), str(out))
    assert done.returncode == 2
    assert "ACCOUNT_ID: not filled in" in done.stderr
    assert "IMAGE: not filled in" in done.stderr
    assert not out.exists()


def test_command_line_refuses_a_vars_file_that_is_not_json(root: Path, tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.json"
    vars_file.write_text("ACCOUNT_ID=1")
    done = _run_cli(root, "--vars", str(vars_file), str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("render: error:")
    assert "Traceback" not in done.stderr


def test_the_readme_documents_every_variable(root: Path, render: ModuleType) -> None:
    readme = (root / "deploy/ecs/README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme, flags=re.MULTILINE))
    assert documented == set(render.load_variables())
