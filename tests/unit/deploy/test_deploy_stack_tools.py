"""The stack passes the tools AWS users run on CloudFormation: cfn-lint and checkov.

cfn-lint: no error and no warning, except the ignores written in the template's own metadata, each
with its reason. checkov: no failed check, except the skips written on the resources with a reason,
and every skip is one checkov applied (none is left over from a resource that changed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import STACK

CHECKOV = Path(os.environ.get("CHECKOV", str(STACK.parents[2] / ".cache" / "checkov" / "bin" / "checkov")))
ACCEPTED_CFN_LINT_IGNORES = {"W1030"}  # why: the comment beside it in the template's metadata


def test_cfn_lint_reports_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run(
        [str(cfn_lint), "--format", "parseable", str(STACK)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_cfn_lint_ignores_only_what_the_template_explains(template: dict[str, Any]) -> None:
    ignored = set(template["Metadata"]["cfn-lint"]["config"]["ignore_checks"])
    assert ignored == ACCEPTED_CFN_LINT_IGNORES
    text = STACK.read_text()
    for check in ignored:  # the reason is the comment right above the ignored id
        above = text.split(f"- {check}")[0].rstrip().splitlines()[-1].strip()
        assert above.startswith("#"), f"{check} is ignored without a reason"
    for resource in template["Resources"].values():
        assert "cfn-lint" not in resource.get("Metadata", {}), "ignores belong in the template's metadata"


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "stack.yaml"
    broken.write_text(STACK.read_text().replace("HealthCheckPath: /readyz", "HealthCheckPaths: /readyz"))
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run(
        [str(cfn_lint), "--format", "parseable", str(broken)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "HealthCheckPaths" in done.stdout


def _checkov() -> Path:
    if CHECKOV.is_file():
        return CHECKOV
    found = shutil.which("checkov")
    if found is None:
        pytest.skip(f"checkov is not installed: `make install-dev` puts it in {CHECKOV.parent.parent}")
    return Path(found)


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    done = subprocess.run(
        [str(_checkov()), "-f", str(STACK), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    assert checkov_report["summary"]["parsing_errors"] == 0
    assert checkov_report["summary"]["passed"] > 100  # it really looked at the resources
    failed = [(c["check_id"], c["resource"]) for c in checkov_report["results"]["failed_checks"]]
    assert failed == []


def test_every_checkov_skip_has_a_reason_and_is_used(
    template: dict[str, Any], checkov_report: dict[str, Any]
) -> None:
    written: set[tuple[str, str]] = set()
    for logical_id, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "").split()) >= 3, f"{logical_id}: {skip['id']} without a reason"
            written.add((skip["id"], logical_id))
    applied = {
        (c["check_id"], c["resource"].split(".")[-1]) for c in checkov_report["results"]["skipped_checks"]
    }
    assert written == applied
