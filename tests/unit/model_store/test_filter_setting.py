"""The already-bought filter is on by default and one setting turns it off for the consumer and the API."""

from __future__ import annotations

import pytest

from recsys.settings import build_settings


def test_exclude_bought_defaults_on_and_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_EXCLUDE_BOUGHT", raising=False)
    on = build_settings()
    assert on.exclude_bought is True and on.for_api().exclude_bought is True
    monkeypatch.setenv("RECSYS_EXCLUDE_BOUGHT", "false")
    off = build_settings()
    assert off.exclude_bought is False and off.for_api().exclude_bought is False
