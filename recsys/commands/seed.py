"""``recsys seed``: create and fill the shop's source tables (classicmodels + ratings)."""

from __future__ import annotations

import argparse

from recsys.commands._common import add_command, flag, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "seed",
        "create/fill customers, products and ratings in the shop database",
        "Create the classicmodels tables the pipeline reads (customers, products, ratings) and fill "
        "the empty ones with a deterministic generator. On an existing classicmodels database only "
        "ratings are generated (every purchased pair plus drawn ones). ratings gets an updatedAt "
        "column kept by the database (what recsys etl --since/--window reads). See docs/etl.md.",
    )
    flag(
        parser,
        "--source-url",
        "the shop database (mysql+pymysql://user@host/db); unset = the embedded PostgreSQL shop",
        metavar="URL",
    )
    flag(parser, "--scale", "size: 1 = the sample (122 customers, 110 products, ~3.4k ratings)", type=float)
    flag(parser, "--seed", "generator seed (same seed and scale, same rows)", type=int)
    flag(
        parser,
        "--reset-ratings",
        "empty an existing ratings table and generate it again",
        action="store_true",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    summary = runtime.jobs.seed(
        settings_from(args),
        scale=1.0 if args.scale is None else float(args.scale),
        seed=42 if args.seed is None else int(args.seed),
        reset_ratings=bool(args.reset_ratings),
    )
    kept = f"; kept existing {', '.join(summary.kept)}" if summary.kept else ""
    if summary.added_update_time:
        kept += "; added ratings.updatedAt (incremental etl runs)"
    print(
        f"seeded {summary.source}: {summary.customers_total} customers "
        f"({summary.customers_created} generated), {summary.products_total} products "
        f"({summary.products_created} generated), {summary.ratings_written} ratings written "
        f"({summary.purchased_pairs} purchased pairs){kept} in {summary.seconds:.1f}s"
    )
    return 0
