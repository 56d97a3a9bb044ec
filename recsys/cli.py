"""The ``recsys`` console script.

Exit codes: 0 success; 2 a user mistake or an unreachable dependency (a bad flag or URL, a missing
table, a database that does not answer: the one-line message says what to change); 130 interrupted;
1 with a traceback only for a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from core.errors import RecsysError
from recsys import __version__

__all__ = ["build_parser", "main"]

# (module in recsys.commands, its order in --help)
COMMANDS = (
    "stack",
    "migrate",
    "seed",
    "etl",
    "train",
    "load_vectors",
    "import_lab_artifacts",
    "produce",
    "consume",
    "serve",
    "run",
    "demo",
    "forget",
    "bench",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recsys",
        description="Streaming product recommendations: batch ETL, two-tower model, pgvector, "
        "Kinesis consumer, Firehose delivery and an HTTP API.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"recsys.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"recsys.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from pydantic import ValidationError

    from infra.logs import configure_logging

    try:
        configure_logging(
            getattr(args, "log_level", None) or "INFO", getattr(args, "log_format", None) or "text"
        )
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecsysError as exc:  # a user mistake or an unreachable dependency: one line, exit 2
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"recsys {args.command}: error: {first_line}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings from flags or RECSYS_* variables
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        print(f"recsys {args.command}: error: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
