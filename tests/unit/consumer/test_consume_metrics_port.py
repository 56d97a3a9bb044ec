"""`recsys consume --metrics-port`: the consumer's registry on the task's localhost, for the API
sidecar to append to its /metrics; a port already taken is a user mistake with a one-line reason."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from core.errors import ConfigError
from recsys.cli import build_parser
from recsys.commands._common import settings_from
from recsys.commands.consume import _close_metrics_server, _metrics_server


def test_the_flag_and_the_variable_set_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_METRICS_PORT", raising=False)
    args = build_parser().parse_args(["consume", "--metrics-port", "9101"])
    assert settings_from(args).metrics_port == 9101
    monkeypatch.setenv("RECSYS_METRICS_PORT", "9102")
    assert settings_from(build_parser().parse_args(["consume"])).metrics_port == 9102
    assert _metrics_server(None) is None  # unset: no server (the default)


def test_the_registry_is_served_on_127_0_0_1_only() -> None:
    from consumer import metrics

    metrics.RECORDS_IN.inc(0)  # the consumer's metrics are on the default registry
    exporter = _metrics_server(0)
    assert exporter is not None
    server, _ = exporter
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b"recsys_consumer_records_in_total" in answer.read()
    finally:
        _close_metrics_server(exporter)


def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics-port {port}"):
            _metrics_server(port)
