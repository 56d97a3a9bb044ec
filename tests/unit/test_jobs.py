"""The batch jobs' wiring (recsys.runtime.jobs): options are checked before anything is resolved (no
embedded stack starts, no AWS decision is made for a mistake), and the commands reach the product's
packages only through the runtime."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.errors import ArtifactError, ConfigError
from recsys import bootstrap
from recsys.runtime import jobs
from recsys.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"core", "infra", "model_store", "etl", "consumer", "service", "compliance"}


@pytest.fixture
def nothing_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a job resolved a location before checking its options")

    for name in ("prepare_aws", "database_url", "source_url", "ensure_local_stack"):
        monkeypatch.setattr(bootstrap, name, refuse)
    return Settings(state_dir=tmp_path, lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts"))


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (lambda s: jobs.seed(s, scale=0), "--scale must be in"),
        (lambda s: jobs.etl(s, retention_days=-1), "--retention-days must be positive"),
        (lambda s: jobs.etl(s, since="yesterday"), "--since"),
        (lambda s: jobs.etl(s.model_copy(update={"lake": None})), "--lake is required"),
        (lambda s: jobs.train(s, epochs=0), "--epochs must be at least 1"),
        (lambda s: jobs.train(s.model_copy(update={"artifacts": " "})), "--artifacts is required"),
        (lambda s: asyncio.run(jobs.load_vectors(s, keep=0)), "--keep must be at least 1"),
        (jobs.produce, "exactly one of --count N and --duration S"),
        (lambda s: jobs.produce(s, count=1, duration_s=1.0), "exactly one of --count N and --duration S"),
    ],
)
def test_a_bad_option_is_refused_before_anything_is_resolved(
    nothing_resolved: Settings, job: Any, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        job(nothing_resolved)


def test_lab_pickles_are_refused_without_trust(nothing_resolved: Settings) -> None:
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        jobs.import_lab_artifacts(nothing_resolved, "lab/", trust_pickle=False)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(
    "command",
    ["migrate", "seed", "etl", "train", "load_vectors", "import_lab_artifacts", "produce", "forget"],
)
def test_a_job_command_runs_its_package_only_through_the_runtime(command: str) -> None:
    """argparse -> settings -> recsys.runtime.jobs -> print: the command imports no package function
    (errors it answers, such as a failed quality gate, are the exception)."""
    used = {
        name
        for name in _imports(ROOT / "recsys" / "commands" / f"{command}.py")
        if name.split(".")[0] in PACKAGES and name not in {"core.errors", "etl.gates"}
    }
    assert not used, f"recsys {command} imports {sorted(used)}: go through recsys.runtime.jobs"
