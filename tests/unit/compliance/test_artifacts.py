"""``forget`` in the artifact store: the customer leaves a version's user embeddings and bought lists,
and the version still verifies; a version of the previous release (bought lists in a third column)
is cleaned as well."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from compliance.objects import artifact_changes
from infra.objectstore import LocalStore
from model_store.artifacts import FILES, MANIFEST, export_trained, load_bundle
from model_store.testing import previous_release_layout, synthetic_ratings
from model_store.training import TrainedModel, fit
from recsys.settings import TrainSettings


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    table = synthetic_ratings(n_customers=30, n_products=20, ratings_per_customer=8, seed=3)
    return fit(table, TrainSettings(epochs=2, hidden=[8], batch_size=64, seed=2))


def _ids(body: bytes) -> list[int]:
    return [int(row[0]) for row in list(csv.reader(io.StringIO(body.decode())))[1:]]


def test_forget_removes_the_customer_from_both_user_files_and_keeps_the_version_loadable(
    trained: TrainedModel, tmp_path: Path
) -> None:
    version = export_trained(str(tmp_path), trained)
    store = LocalStore(str(tmp_path))
    before = load_bundle(store, version)
    target = before.user_ids[5]
    bought_key = f"{version}/{FILES['user_bought']}"
    assert target in _ids(store.get_bytes(bought_key))

    planned = artifact_changes(store, target, apply=False)
    files = [f"{version}/{FILES[k]}" for k in ("user_bought", "user_embeddings")]
    assert sorted(c.target for c in planned) == files
    assert target in _ids(store.get_bytes(bought_key))  # a dry run changes nothing

    done = artifact_changes(store, target, apply=True)
    assert sum(c.rows for c in done) == 2 and all("manifest updated" in c.action for c in done)
    assert target not in _ids(store.get_bytes(bought_key))
    assert target not in _ids(store.get_bytes(f"{version}/{FILES['user_embeddings']}"))
    after = load_bundle(store, version)  # the checksums were updated
    keep = [i for i, u in enumerate(before.user_ids) if u != target]
    assert after.user_ids == [before.user_ids[i] for i in keep]
    assert before.user_bought is not None
    assert after.user_bought == [before.user_bought[i] for i in keep]
    assert json.loads(store.get_bytes(f"{version}/{MANIFEST}"))["counts"]["users"] == len(keep)
    assert artifact_changes(store, target, apply=True) == []  # a repeat finds nothing


def test_forget_cleans_a_version_of_the_previous_release(trained: TrainedModel, tmp_path: Path) -> None:
    version = export_trained(str(tmp_path), trained)
    previous_release_layout(str(tmp_path / version))
    store = LocalStore(str(tmp_path))
    before = load_bundle(store, version)
    target = before.user_ids[2]
    done = artifact_changes(store, target, apply=True)
    assert [c.target for c in done] == [f"{version}/{FILES['user_embeddings']}"] and done[0].rows == 1
    after = load_bundle(store, version)
    assert target not in after.user_ids and before.user_bought is not None
    kept = [b for u, b in zip(before.user_ids, before.user_bought, strict=True) if u != target]
    assert after.user_bought == kept
