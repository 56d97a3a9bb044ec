"""``recsys import-lab-artifacts``: artifacts made the lab's way (pickled scalers) -> our verified layout."""

from __future__ import annotations

import argparse

from recsys.commands._common import add_command, flag, settings_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "import-lab-artifacts",
        "convert the lab's artifacts (state_dict + scikit-learn .pkl scalers) into a new version",
        "Read model/best_model.pth (weights only), the pickled OneHotEncoder/StandardScaler files and "
        "the embeddings CSVs from DIR_OR_URI, and export them as a new verified artifact version with "
        "the scalers as plain JSON. Unpickling runs code from the files, so this refuses to start "
        "without --trust-pickle. The lab keeps no ratings: with --lake, the version's popular items "
        "(the answer for customers the model knows nothing of) are ranked from the lake's latest run, "
        "as `recsys train` ranks them; without it the version has none. See docs/model.md.",
    )
    parser.add_argument(
        "source", metavar="DIR_OR_URI", help="the lab's artifacts: a folder or s3://bucket/prefix"
    )
    flag(
        parser,
        "--trust-pickle",
        "I trust these .pkl files: unpickle them once to convert them",
        action="store_true",
    )
    flag(parser, "--artifacts", "ml-artifacts URI to write the new version to", metavar="URI")
    flag(
        parser,
        "--lake",
        "data lake URI whose latest run ranks the popular items (s3://bucket/prefix or a folder)",
        metavar="URI",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recsys import runtime

    settings = settings_from(args)
    version = runtime.jobs.import_lab_artifacts(settings, args.source, trust_pickle=bool(args.trust_pickle))
    artifacts = str(settings.artifacts)
    print(f"imported {args.source} as version {version} under {artifacts}")
    if settings.lake is None:
        print(
            "note: without --lake this version has no popular items: customers the model knows "
            "nothing of get no recommendations from it"
        )
    print(f"next: recsys load-vectors --artifacts {artifacts} --version {version}")
    return 0
