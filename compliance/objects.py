"""The customer's records in the object stores: delivered recommendations, dead letters, artifacts.

Each affected object is rewritten whole, under its own key, without the customer's lines (one PUT:
readers see the old object or the new one), or deleted when nothing else is left in it. Firehose
only ever creates new objects, and dead-letter keys are per batch position, so rewriting an
existing object does not race with the writers.

Artifacts: each version's ``embeddings/user_embeddings.csv`` and ``embeddings/user_bought.csv`` (a
hybrid version's already-bought lists) lose the customer's row, and the version's ``manifest.json``
gets their new sha256 and size and the user count, so the version still verifies and can still be
loaded. The CSVs are written first, the manifest last (once per version): a load that falls between
the writes is refused by the checksum check (it does not load half-forgotten data) and succeeds when
retried. Versions whose export crashed (no manifest) are rewritten too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from compliance.records import (
    FilterResult,
    filter_dead_letters,
    filter_delivered,
    filter_embeddings_csv,
)
from compliance.report import Change
from infra.objectstore import ObjectStore
from model_store.artifacts import FILES, MANIFEST

__all__ = ["artifact_changes", "dead_letter_changes", "delivery_changes"]

_USER_CSV = FILES["user_embeddings"]
_USER_FILES = (_USER_CSV, FILES["user_bought"])  # both have the customer number in their first column


def _rewrite_all(
    store: ObjectStore,
    store_name: str,
    customer: int,
    apply: bool,
    filter_fn: Callable[[str, bytes], FilterResult],
) -> list[Change]:
    changes: list[Change] = []
    for key in list(store.list("")):
        result = filter_fn(key, store.get_bytes(key))
        if not result.changed:
            continue
        if result.kept:
            action = "rewritten without them" if apply else "rewrite without them"
            if apply and result.body is not None:
                store.put_bytes(key, result.body)
        else:
            action = "deleted (nothing else in it)" if apply else "delete (nothing else in it)"
            if apply:
                store.delete([key])
        changes.append(Change(store_name, key, result.removed, action))
    return changes


def delivery_changes(store: ObjectStore, customer: int, *, apply: bool) -> list[Change]:
    """Delivered recommendation records (newline-delimited JSON, maybe gzipped) of the customer."""
    return _rewrite_all(
        store, "delivery", customer, apply, lambda key, body: filter_delivered(key, body, customer)
    )


def dead_letter_changes(store: ObjectStore, customer: int, *, apply: bool) -> list[Change]:
    """Dead letters whose raw record (or partition key) names the customer."""
    return _rewrite_all(
        store, "dead_letters", customer, apply, lambda _key, body: filter_dead_letters(body, customer)
    )


def artifact_changes(store: ObjectStore, customer: int, *, apply: bool) -> list[Change]:
    """The customer's rows in every version's user embeddings and bought lists, with the manifest
    kept verifiable."""
    versions: dict[str, list[str]] = {}
    for key in list(store.list("")):
        for name in _USER_FILES:
            if key.endswith("/" + name):
                versions.setdefault(key[: -len(name) - 1], []).append(name)
    changes: list[Change] = []
    for version, names in sorted(versions.items()):
        rewritten: dict[str, bytes] = {}
        removed: dict[str, int] = {}
        users: int | None = None
        for name in sorted(names, key=_USER_FILES.index):
            result = filter_embeddings_csv(store.get_bytes(f"{version}/{name}"), customer)
            if not result.changed or result.body is None:
                continue
            rewritten[name], removed[name] = result.body, result.removed
            if name == _USER_CSV:
                users = result.kept
        if not rewritten:
            continue
        manifest_key = f"{version}/{MANIFEST}"
        has_manifest = store.exists(manifest_key)
        if apply:
            for name, body in rewritten.items():  # the files first, then the manifest that lists them
                store.put_bytes(f"{version}/{name}", body)
            if has_manifest:
                manifest = json.loads(store.get_bytes(manifest_key))
                listed = manifest.setdefault("files", {})
                for name, body in rewritten.items():
                    listed[name] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
                counts = manifest.get("counts")
                if isinstance(counts, dict) and users is not None:
                    counts["users"] = users
                store.put_bytes(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
            action = "rewritten; manifest updated" if has_manifest else "rewritten (no manifest)"
        elif has_manifest:
            action = "rewrite the CSV, update the manifest's checksum and user count"
        else:
            action = "rewrite the CSV (a version without a manifest)"
        for name in rewritten:
            changes.append(Change("artifacts", f"{version}/{name}", removed[name], action))
    return changes
