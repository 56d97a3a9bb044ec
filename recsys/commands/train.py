"""``recsys train``: train the two-tower model on the latest lake run and export a new artifact version."""

from __future__ import annotations

import argparse
import json

from recsys.commands._common import add_command, flag, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "train",
        "train, evaluate and export a new model artifact version",
        "Read the latest complete run of <lake>/ratings_ml_training, fit the feature parameters and "
        "the two towers (early stopping on a held-out split), evaluate on a second held-out split "
        "against the mean-rating and popularity baselines, and export a verified artifact version "
        "under <artifacts>/<version>/. See docs/model.md.",
    )
    flag(parser, "--lake", "data lake URI: s3://bucket/prefix or a local folder", metavar="URI")
    flag(parser, "--artifacts", "ml-artifacts URI: s3://bucket/prefix or a local folder", metavar="URI")
    flag(parser, "--epochs", "maximum epochs (RECSYS_TRAIN__EPOCHS also works)", type=int, metavar="N")
    flag(parser, "--seed", "random seed of the split, initialisation and shuffles", type=int, metavar="N")
    flag(parser, "--json", "print the summary as JSON", action="store_true")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    settings = settings_from(args)
    summary = runtime.jobs.train(settings, epochs=args.epochs, seed=args.seed)
    artifacts = str(settings.artifacts)
    m = summary.metrics
    if args.json:
        print(
            json.dumps(
                {
                    "version": summary.version,
                    "lake_run": summary.lake_run,
                    "rows": summary.rows,
                    "users": summary.users,
                    "items": summary.items,
                    "epochs_run": summary.epochs_run,
                    "best_epoch": summary.best_epoch,
                    "seconds": round(summary.seconds, 3),
                    "metrics": m,
                }
            )
        )
        return 0
    print(f"version     {summary.version}  ({artifacts.rstrip('/')}/{summary.version}/)")
    print(f"data        lake run {summary.lake_run}: {summary.rows} ratings, {summary.users} users, ", end="")
    print(f"{summary.items} items")
    print(f"training    {summary.epochs_run} epochs, best {summary.best_epoch}, {summary.seconds:.1f} s")
    print(f"rmse        {m['rmse']:.3f}  (mean-rating baseline {m['rmse_mean_baseline']:.3f})")
    print(f"ndcg@10     {m['ndcg_at_10']:.3f}  (popularity baseline {m['popular_ndcg_at_10']:.3f})")
    print(f"hit@10      {m['hit_rate_at_10']:.3f}  (popularity baseline {m['popular_hit_rate_at_10']:.3f})")
    print(
        f"coverage    {m['catalog_coverage_at_10']:.3f}  "
        f"(popularity baseline {m['popular_catalog_coverage_at_10']:.3f})"
    )
    return 0
