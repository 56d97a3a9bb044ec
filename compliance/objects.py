"""The customer's records in the object stores: delivered recommendations, dead letters, artifacts.

Each affected object is rewritten whole, under its own key, without the customer's lines (one PUT:
readers see the old object or the new one), or deleted when nothing else is left in it. Firehose
only ever creates new objects, and dead-letter keys are per batch position, so rewriting an
existing object does not race with the writers.

Artifacts: each version's ``embeddings/user_embeddings.csv`` loses the customer's row, and the
version's ``manifest.json`` gets the new sha256, size and user count, so the version still verifies
and can still be loaded. The two objects are written CSV first: a load that falls between the two
writes is refused by the checksum check (it does not load half-forgotten data) and succeeds when
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
    """The customer's row in every version's user embeddings, with the manifest kept verifiable."""
    changes: list[Change] = []
    for key in list(store.list("")):
        if not key.endswith("/" + _USER_CSV):
            continue
        version = key[: -len(_USER_CSV) - 1]
        result = filter_embeddings_csv(store.get_bytes(key), customer)
        if not result.changed or result.body is None:
            continue
        manifest_key = f"{version}/{MANIFEST}"
        has_manifest = store.exists(manifest_key)
        action = "rewrite the CSV, update the manifest's checksum and user count"
        if not has_manifest:
            action = "rewrite the CSV (a version without a manifest)"
        if apply:
            store.put_bytes(key, result.body)
            if has_manifest:
                manifest = json.loads(store.get_bytes(manifest_key))
                manifest.setdefault("files", {})[_USER_CSV] = {
                    "sha256": hashlib.sha256(result.body).hexdigest(),
                    "bytes": len(result.body),
                }
                counts = manifest.get("counts")
                if isinstance(counts, dict):
                    counts["users"] = result.kept
                store.put_bytes(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
            action = "rewritten; manifest updated" if has_manifest else "rewritten (no manifest)"
        changes.append(Change("artifacts", key, result.removed, action))
    return changes
