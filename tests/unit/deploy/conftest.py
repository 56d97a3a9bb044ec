"""Fixtures for the deployment tests: the renderer (loaded by path: ``deploy`` is not part of the
package) and the templates rendered with the example variables."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
ECS = ROOT / "deploy" / "ecs"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def top_packages() -> list[str]:
    """The project's top-level packages, as pyproject.toml lists them for the wheel."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return sorted({name.split(".")[0] for name in listed})


@pytest.fixture(scope="session")
def render() -> ModuleType:
    name = "recsys_deploy_ecs_render"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ECS / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_vars() -> dict[str, Any]:
    values: dict[str, Any] = json.loads((ECS / "vars.example.json").read_text())
    return values


@pytest.fixture(scope="session")
def rendered(render: ModuleType, example_vars: dict[str, Any]) -> dict[str, Any]:
    """Every template rendered with deploy/ecs/vars.example.json, by relative path ("iam/x.json")."""
    documents: dict[Path, Any] = render.render_dir(example_vars)
    return {str(path): doc for path, doc in documents.items()}
