"""``recsys load-vectors``: a verified artifact version -> pgvector, switched on atomically."""

from __future__ import annotations

import argparse

from recsys.commands._common import add_command, flag, run_async, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "load-vectors",
        "load an artifact version into PostgreSQL + pgvector and make it the active version",
        "Verify every file of the version (sha256 in its manifest), bulk-load the item and user "
        "embeddings with binary COPY into per-version tables with an HNSW index, precompute the "
        "item-to-item neighbours, store the weights and feature parameters, and switch the active "
        "version (and the item_emb/user_emb views) in one transaction. Loading a version that is "
        "already loaded just switches to it (a rollback). See docs/model.md.",
    )
    flag(parser, "--artifacts", "ml-artifacts URI: s3://bucket/prefix or a local folder", metavar="URI")
    flag(parser, "--version", "the artifact version to load (default: the latest)", metavar="V")
    flag(parser, "--database-url", "PostgreSQL URL; unset = the embedded stack", metavar="URL")
    flag(parser, "--keep", "loaded versions to keep, the active one included (default: 3)", type=int)
    flag(
        parser,
        "--recall-target",
        "recall@10 the version's HNSW search width (ef_search) must reach, measured after the index "
        "is built; the version serves with the smallest width that does "
        "(default: 0.98)",
        type=float,
        dest="recall_target",
        metavar="R",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    settings = settings_from(args)
    keep = runtime.jobs.KEEP_VERSIONS if args.keep is None else int(args.keep)
    summary = run_async(runtime.jobs.load_vectors(settings, version=args.version, keep=keep))
    how = "already loaded, switched to it" if summary.already_loaded else f"loaded in {summary.seconds:.2f} s"
    print(f"active version {summary.version}: {summary.items} items, {summary.users} users ({how})")
    if summary.ef_search is not None:
        recall = "" if summary.ef_search_recall is None else f", recall@10 {summary.ef_search_recall:.3f}"
        print(f"search width: ef_search {summary.ef_search}{recall} (target {settings.recall_target})")
    if summary.dropped:
        print(f"dropped old versions: {', '.join(summary.dropped)}")
    return 0
