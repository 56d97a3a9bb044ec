"""``recsys migrate``: apply the SQL migrations (idempotent)."""

from __future__ import annotations

import argparse

from recsys.commands._common import add_command, flag, run_async, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(sub, "migrate", "apply the SQL migrations (ordered, recorded, idempotent)")
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    applied = run_async(runtime.jobs.migrate(settings_from(args)))
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return 0
