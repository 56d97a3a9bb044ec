"""The serving processes (``recsys consume``, ``recsys serve``, ``recsys run``) never import torch:
its import alone took 2.2 s of CPU, most of a new consumer's start-up (docs/performance.md,
"Start-up"). Each entry point's modules, and the modules their start-up imports later, are imported
in a fresh interpreter, which then must not hold torch (nor scikit-learn, a training-only import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ENTRY_POINTS = {
    "consume": [
        "recsys.commands.consume",
        "recsys.runtime._consumer",
        "recsys.runtime._heap",
        "model_store.recommender",
        "model_store.serving",
        "infra.suppression",
        "infra.pg",
        "consumer.setup",
    ],
    "serve": [
        "recsys.commands.serve",
        "recsys.runtime._api",
        "service.model",
        "service.server",
        "model_store.recommender",
        "infra.pg",
    ],
    "run": [
        "recsys.commands.run",
        "recsys.runtime._run",
        "recsys.runtime",
        "service.model",
        "model_store.recommender",
    ],
    "cli": ["recsys.cli"],
}
TRAINING_ONLY = ("torch", "sklearn")


def _loaded_after(code: str) -> list[str]:
    check = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {TRAINING_ONLY!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", check], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_serving_entry_point_imports_no_torch(entry: str) -> None:
    imports = "\n".join(f"import {module}" for module in ENTRY_POINTS[entry])
    assert _loaded_after(imports) == []


def test_the_check_sees_torch_when_it_is_imported() -> None:
    assert _loaded_after("import model_store.model") == ["torch"]


@pytest.mark.parametrize("command", ["consume", "serve", "run"])
def test_the_commands_help_imports_no_torch(command: str) -> None:
    code = (
        "import contextlib, io\n"
        "from recsys.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main([{command!r}, '--help'])"
    )
    assert _loaded_after(code) == []
