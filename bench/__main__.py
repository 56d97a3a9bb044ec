"""``python -m bench [NAME ...]``: run the named benchmarks (default: all), print, write JSON."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path


def _names() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(_names())})")
    parser.add_argument("--quick", action="store_true", help="smaller scales and fewer runs")
    args = parser.parse_args()
    for name in args.names or _names():
        if name not in _names():
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(_names())}")
        module = importlib.import_module(f"bench.{name}")
        module.main(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
