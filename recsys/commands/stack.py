"""``recsys stack up|down|status|env``: the embedded local stack."""

from __future__ import annotations

import argparse
import json
import shlex

from recsys.commands._common import add_command, settings_from
from recsys.stack import LocalStack

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "stack",
        "the embedded local stack (PostgreSQL + pgvector, moto for S3/Kinesis/Firehose)",
        "Start, stop or inspect the embedded stack. Its servers listen on 127.0.0.1 only. "
        '`eval "$(recsys stack env)"` points a shell\'s later commands at it.',
    )
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("--purge", action="store_true", help="with down: also delete the state folder")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stack = LocalStack(settings.state_dir)
    if args.action == "up":
        info = stack.up()
        print(f"PostgreSQL  {info.database_url}")
        print(f"moto (AWS)  {info.aws_endpoint_url}")
        print(f"state       {info.state_dir}")
        print('use it from a shell: eval "$(recsys stack env)"')
    elif args.action == "down":
        if args.purge:
            stack.destroy()
            print(f"stack stopped, {settings.state_dir} deleted")
        else:
            stack.down()
            print("stack stopped (PostgreSQL data kept; moto state is gone)")
    elif args.action == "status":
        status = stack.status()
        print(json.dumps(status, indent=2))
        return 0 if status["postgres"]["running"] and status["moto"]["running"] else 3
    else:
        running = stack.info()
        if running is None:
            print("recsys stack: error: the stack is not running; start it with `recsys stack up`")
            return 2
        for key, value in running.env().items():
            print(f"export {key}={shlex.quote(value)}")
    return 0
