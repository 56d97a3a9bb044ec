"""docs/operations.md names only things that exist: commands, settings, metrics, the stack's
parameters and outputs, alarms, columns; and its deploy commands are ones the stack takes."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from recsys.settings import Settings

from .conftest import ROOT


@pytest.fixture(scope="module")
def guide(root: Path) -> str:
    return (root / "docs" / "operations.md").read_text()


def setting_variables() -> set[str]:
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        names.add(f"RECSYS_{field_name.upper()}")
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for nested in annotation.model_fields:
                names.add(f"RECSYS_{field_name.upper()}__{nested.upper()}")
    return names


def test_every_recsys_variable_in_the_guide_is_a_setting(guide: str) -> None:
    mentioned = set(re.findall(r"RECSYS_[A-Z0-9_]*[A-Z0-9]", guide))
    pattern_only = {"RECSYS_"}  # "RECSYS_<SECTION>__<NAME>" explains the pattern
    assert mentioned - pattern_only, "the scan found nothing"
    assert mentioned - setting_variables() - pattern_only == set()


def test_every_recsys_command_in_the_guide_exists(guide: str) -> None:
    from recsys.cli import build_parser

    parser = build_parser()
    commands: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = set(action.choices)
    mentioned = set(re.findall(r"`recsys ([a-z][a-z-]*)", guide))
    assert {"migrate", "etl", "train", "load-vectors"} <= mentioned  # the pipeline's steps
    mentioned |= set(re.findall(r'"command":\["([a-z][a-z-]*)"', guide))  # run-task overrides
    assert mentioned - commands == set()


def test_every_metric_in_the_guide_is_registered(guide: str) -> None:
    from prometheus_client import REGISTRY

    import consumer.metrics
    import service.metrics

    assert consumer.metrics.RECORDS_IN is not None and service.metrics.REQUESTS is not None
    registered = {metric.name for metric in REGISTRY.collect()}
    mentioned = set(re.findall(r"\brecsys_(?:consumer|api)_[a-z_]+", guide))
    assert len(mentioned) >= 10
    unknown = {m for m in mentioned if m not in registered and m.removesuffix("_total") not in registered}
    assert unknown == set()


def deploy_commands(guide: str) -> list[dict[str, str]]:
    """Every `aws cloudformation deploy` of the guide: its options, and its parameter overrides."""
    found = []
    for command in re.findall(r"aws cloudformation deploy (?:[^\n]*\\\n)*[^\n]*", guide):
        words = shlex.split(command.replace("\\\n", " "))
        options: dict[str, str] = {}
        overrides: dict[str, str] = {}
        key = ""
        for word in words[3:]:
            if word.startswith("--"):
                key = word
                options[key] = ""
            elif key == "--parameter-overrides":
                name, _, value = word.partition("=")
                overrides[name] = value
            else:
                options[key] = word
        found.append({**options, **{f"param:{k}": v for k, v in overrides.items()}})
    return found


def test_the_guide_deploys_the_stack_with_parameters_it_has(guide: str, template: dict[str, Any]) -> None:
    commands = deploy_commands(guide)
    assert len(commands) >= 4
    declared = template["Parameters"]
    required = {name for name, spec in declared.items() if "Default" not in spec}
    for command in commands:
        assert command["--template-file"] == "deploy/ecs/stack.yaml"
        assert (ROOT / command["--template-file"]).is_file()
        assert command["--stack-name"] == "recsys" and command["--capabilities"] == "CAPABILITY_IAM"
        given = {k.removeprefix("param:") for k in command if k.startswith("param:")}
        assert given and given <= set(declared), given - set(declared)
    first = {k.removeprefix("param:"): v for k, v in commands[0].items() if k.startswith("param:")}
    assert required <= set(first), "the first deploy must give every parameter without a default"
    assert "ImageTag" not in first  # no image exists yet
    # the example values pass the parameters' own constraints
    for name, value in first.items():
        pattern = declared[name].get("AllowedPattern")
        for item in value.split(","):
            assert pattern is None or re.fullmatch(pattern, item), (name, item)


def test_every_stack_parameter_and_output_in_the_guide_exists(guide: str, template: dict[str, Any]) -> None:
    outputs = set(re.findall(r"\$\(out ([A-Za-z]+)\)", guide))
    assert outputs and outputs <= set(template["Outputs"]), outputs - set(template["Outputs"])
    mentioned = set(re.findall(r"`([A-Z][A-Za-z]+[a-z][A-Za-z]*)(?:=[^`]*)?`", guide))
    parameters = {m for m in mentioned if m in template["Parameters"] or m.endswith(("Arn", "Id", "Ids"))}
    unknown = parameters - set(template["Parameters"]) - set(template["Outputs"])
    assert unknown == set()


def test_the_alarms_in_the_guide_are_the_stacks(guide: str, template: dict[str, Any]) -> None:
    table = re.findall(r"^\| `([a-z0-9-]+)` \| ", guide, re.MULTILINE)
    alarms = {
        str(r["Properties"]["AlarmDescription"]).split(":")[0]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert set(table) == alarms


def test_lease_table_columns_in_the_guide_exist(guide: str, root: Path) -> None:
    migration = "\n".join(p.read_text() for p in (root / "sql").glob("02*.sql"))
    (select,) = re.findall(r"SELECT ([a-z_, ]+)\nFROM kinesis_leases", guide)
    columns = [c.strip() for c in select.split(",")]
    columns += re.findall(r"SET (\w+) = NULL, (\w+) = ", guide)[0]
    assert "CREATE TABLE IF NOT EXISTS kinesis_leases" in migration
    for column in columns:
        assert re.search(rf"^\s+{column}\s", migration, re.MULTILINE), column


def test_the_stack_readme_documents_every_parameter(root: Path, template: dict[str, Any]) -> None:
    readme = (root / "deploy" / "ecs" / "README.md").read_text()
    documented = re.findall(r"^\| `([A-Za-z0-9]+)` \| ([^|]+) \|", readme, flags=re.MULTILINE)
    assert {name for name, _ in documented} == set(template["Parameters"])
    for name, default in documented:
        spec = template["Parameters"][name]
        shown = (
            "**required**"
            if "Default" not in spec
            else f"`{spec['Default']}`"
            if spec["Default"] != ""
            else "empty"
        )
        assert default.strip() == shown, name
