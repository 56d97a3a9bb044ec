"""``python -m bench [NAME ...] [--quick]``: run the named benchmarks (default: all), print each
one's table, write ``bench/results/<name>.json``, then print and write the combined summary
(``bench/results/summary.json``: the headline ratios of every benchmark that has results).

Benchmarks that need PostgreSQL or the AWS emulators share one embedded stack in
``.state/bench/`` (``RECSYS_BENCH_STATE_DIR``); the seeded shop, lake, artifacts and loaded model are
kept there between runs; the stack is stopped at the end unless another ``python -m bench`` still
uses it (``--keep-stack`` leaves it up).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time
import traceback
from pathlib import Path

from bench._harness import print_summary, stop_bench_stack, summarise, write_summary


def drop_streams() -> None:
    """Delete the streams the benchmark made (moto's quota of 50 delivery streams is per run)."""
    from bench.lab_reference import drop_fresh_streams

    try:
        drop_fresh_streams()
    except Exception as exc:  # a cleanup failure must not hide the figures
        print(f"  (could not delete the benchmark's streams: {exc})")


def _names() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(_names())})")
    parser.add_argument("--quick", action="store_true", help="smaller scales and fewer runs")
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench's embedded stack running")
    args = parser.parse_args()
    names = args.names or _names()
    for name in names:
        if name not in _names():
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(_names())}")
    failed: list[str] = []
    try:
        for name in names:
            started = time.perf_counter()
            print(f"\n>>> {name}{' (quick)' if args.quick else ''}", flush=True)
            module = importlib.import_module(f"bench.{name}")
            try:
                module.main(quick=args.quick)
            except Exception:  # one broken benchmark must not hide the others' figures
                traceback.print_exc()
                failed.append(name)
            finally:
                drop_streams()
            print(f"<<< {name} took {time.perf_counter() - started:.0f}s", flush=True)
    finally:
        if not args.keep_stack:
            stop_bench_stack()
    summary = summarise()
    print_summary(summary)
    print(f"\nwrote {write_summary(summary)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
