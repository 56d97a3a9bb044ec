"""Helpers shared by the subcommand modules: flags that are also ``RECSYS_<FLAG>`` variables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from recsys.settings import Settings, build_settings

__all__ = ["SETTINGS_FLAGS", "add_command", "flag", "run_async", "settings_from", "stop_on_signals"]

T = TypeVar("T")

# flags whose value is a field of Settings (the rest are per-command options)
SETTINGS_FLAGS = {
    "state_dir",
    "database_url",
    "source_url",
    "lake",
    "artifacts",
    "stream",
    "delivery_stream",
    "dead_letters",
    "initial_position",
    "host",
    "port",
    "metrics_port",
    "log_level",
    "log_format",
    "recall_target",
}


def flag(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    """Add ``--name``; ``RECSYS_NAME`` sets it too (the flag wins). Its help names the variable.

    A string from the environment goes through the flag's ``type`` like a typed value would;
    ``store_true`` flags read ``1``/``true``/``yes``.
    """
    env = "RECSYS_" + name.lstrip("-").replace("-", "_").upper()
    from_env = os.environ.get(env)
    if kwargs.get("action") == "store_true":
        if from_env is not None:
            kwargs["default"] = from_env.strip().lower() in {"1", "true", "yes", "on"}
    elif from_env is not None:
        kwargs["default"] = from_env
    else:
        kwargs.setdefault("default", None)
    shown = kwargs.get("default")
    suffix = f" (default: {shown})" if shown not in (None, False) and from_env is None else ""
    parser.add_argument(name, help=f"{help}{suffix} [env: {env}]", **kwargs)


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the given flags on top."""
    given = {k: v for k, v in vars(args).items() if k in SETTINGS_FLAGS and v is not None}
    return build_settings(**given)


def run_async(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run ``coro`` to completion on a new event loop: asyncio's, or uvloop's with ``fast_loop``
    (libuv: less CPU per socket event, what uvicorn's ``standard`` extra runs on)."""
    if fast_loop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (a second SIGINT interrupts at once)."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand parser with the flags every command has (state folder, logging)."""
    parser = sub.add_parser(name, help=help, description=description or help)
    flag(parser, "--state-dir", "folder of the embedded stack's data (default: ./.state)", metavar="DIR")
    flag(parser, "--log-level", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    flag(parser, "--log-format", "log format: text for people, json for machines", choices=["text", "json"])
    return parser
