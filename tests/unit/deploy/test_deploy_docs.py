"""docs/operations.md names only things that exist: commands, settings, metrics, files, columns."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from recsys.settings import Settings


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
    jobs = set(re.findall(r"(?:^|&& )run ([a-z][a-z-]*)", guide, re.MULTILINE))  # the run() shell function
    assert jobs == {"migrate", "etl", "train", "load-vectors"}
    mentioned |= jobs
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


def test_every_rendered_file_in_the_guide_exists(guide: str, rendered: dict[str, Any]) -> None:
    mentioned = set(re.findall(r"out/([a-z/-]+\.json)", guide))
    mentioned |= {f"run-task/{job}.json" for job in ("migrate", "etl", "train", "load-vectors")}
    mentioned |= {
        f"alarms/{name}.json" for name in re.findall(r"^\| `([a-z0-9-]+)` \| ", guide, re.MULTILINE)
    }
    assert mentioned - set(rendered) == set()


def test_lease_table_columns_in_the_guide_exist(guide: str, root: Path) -> None:
    migration = "\n".join(p.read_text() for p in (root / "sql").glob("02*.sql"))
    (select,) = re.findall(r"SELECT ([a-z_, ]+)\nFROM kinesis_leases", guide)
    columns = [c.strip() for c in select.split(",")]
    columns += re.findall(r"SET (\w+) = NULL, (\w+) = ", guide)[0]
    assert "CREATE TABLE IF NOT EXISTS kinesis_leases" in migration
    for column in columns:
        assert re.search(rf"^\s+{column}\s", migration, re.MULTILINE), column
