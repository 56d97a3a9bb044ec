"""Training is reproducible and beats its baselines; artifacts round-trip exactly and refuse tampering."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ArtifactError, NotFoundError, UserError
from infra.objectstore import LocalStore
from model_store.artifacts import (
    FILES,
    LATEST,
    MANIFEST,
    OPTIONAL_FILES,
    export_trained,
    format_vector,
    load_bundle,
    parse_vector,
)
from model_store.model import load_state_dict
from model_store.testing import previous_release_layout, synthetic_ratings
from model_store.training import TrainedModel, fit
from recsys.settings import TrainSettings

TINY = TrainSettings(epochs=8, hidden=[16], batch_size=128, seed=11)


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return fit(synthetic_ratings(n_customers=40, n_products=30, ratings_per_customer=12, seed=5), TINY)


def test_training_is_reproducible(trained: TrainedModel) -> None:
    again = fit(synthetic_ratings(n_customers=40, n_products=30, ratings_per_customer=12, seed=5), TINY)
    assert again.state_dict.keys() == trained.state_dict.keys()
    for key, value in trained.state_dict.items():
        assert torch.equal(value, again.state_dict[key]), key
    assert again.metrics == trained.metrics
    assert [h["loss"] for h in again.history] == [h["loss"] for h in trained.history]
    assert trained.training["kind"] == "hybrid" and "logQ" in trained.training["loss"]


def test_embeddings_are_unit_vectors_of_dimension_32(trained: TrainedModel) -> None:
    items, users = trained.item_embeddings(), trained.user_embeddings()
    assert items.shape == (30, 32) and users.shape == (40, 32)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    # the serving forward (float64, row-independent) agrees with the training module's float32 one
    from model_store.model import TwoTower

    model = TwoTower(trained.config, n_users=40, n_items=30)
    model.load_state_dict(trained.state_dict)
    with torch.no_grad():
        reference = model.item_tower(
            torch.from_numpy(trained.item_transform.dense(trained.data.item_columns)), torch.arange(30)
        )
    np.testing.assert_allclose(items, reference.numpy(), atol=1e-5)


def test_a_customer_vector_is_the_same_alone_or_in_a_batch(trained: TrainedModel) -> None:
    from model_store.model import ServingTower

    tower = ServingTower.from_state_dict(trained.export_state_dict(), "user_tower")
    rows = trained.user_transform.dense(trained.data.user_columns)
    batch = tower.embed(rows)
    for i in (0, 7, 39):
        np.testing.assert_array_equal(tower.embed(rows[i : i + 1])[0], batch[i])


def test_model_beats_popularity_for_known_and_cold_start_customers() -> None:
    model = fit(synthetic_ratings(seed=1), TrainSettings())
    m = model.metrics
    assert m["ndcg_at_10"] > 1.5 * m["popular_ndcg_at_10"]
    assert m["hit_rate_at_10"] > m["popular_hit_rate_at_10"]
    assert m["recall_at_10"] > m["popular_recall_at_10"]
    assert m["catalog_coverage_at_10"] > m["popular_catalog_coverage_at_10"]
    # customers held out whole, ranked from their features only
    assert m["cold_users"] >= 10 and m["cold_ndcg_at_10"] > m["cold_popular_ndcg_at_10"]
    assert m["rmse"] < m["rmse_mean_baseline"]  # the auxiliary rating head
    assert model.training["epochs_run"] >= model.training["best_epoch"] >= 1


def test_the_cold_start_prior_is_opt_in_and_moves_only_the_unknown_row(trained: TrainedModel) -> None:
    """The popularity prior for new customers (off by default) is a shift of the user tower's
    ``unknown`` row toward the popular items, its weight chosen on customers held out whole; known
    customers' and items' vectors do not change."""
    from model_store.model import TwoTower
    from model_store.training import PRIOR_GRID, _apply_prior, _popularity_direction, _Prior

    assert trained.training["cold_prior"]["weight"] == 0.0  # the default: no prior
    assert trained.metrics["cold_ndcg_at_10"] == trained.metrics["cold_no_prior_ndcg_at_10"]
    table = synthetic_ratings(n_customers=40, n_products=30, ratings_per_customer=12, seed=5)
    opted = fit(table, TINY.model_copy(update={"cold_prior": True}))
    record = opted.training["cold_prior"]
    assert record["weight"] in PRIOR_GRID and set(record["validation"]) == {f"{w:g}" for w in PRIOR_GRID}
    assert (
        opted.training["pairs"]["cold_start_validation"] > 0
        and "cold_no_prior_hit_rate_at_10" in opted.metrics
    )

    model = TwoTower(trained.config, n_users=40, n_items=30)
    model.load_state_dict(trained.state_dict)
    users_x = torch.from_numpy(trained.user_transform.dense(trained.data.user_columns))
    items_x = torch.from_numpy(trained.item_transform.dense(trained.data.item_columns))
    with torch.no_grad():
        known = model.user_tower(users_x, torch.arange(40)).clone()
        items = model.item_tower(items_x, torch.arange(30)).double().numpy()
        cold = model.user_tower(users_x).double().numpy()
    counts = np.bincount(trained.data.item_index, minlength=30).astype(np.float64)
    direction, _ = _popularity_direction(items, counts)
    _apply_prior(model, _Prior(1.0, 2.0, direction, 1.0))
    with torch.no_grad():
        assert torch.equal(model.user_tower(users_x, torch.arange(40)), known)
        shifted = model.user_tower(users_x).double().numpy()
    log_pop = np.log1p(counts)

    def agreement(
        users: np.ndarray,
    ) -> float:  # mean correlation of a new customer's scores with log-popularity
        return float(np.mean([np.corrcoef(items @ u, log_pop)[0, 1] for u in users]))

    assert agreement(shifted) > agreement(cold) + 0.1


def test_the_popularity_direction_fits_log_popularity() -> None:
    from model_store.training import _popularity_direction

    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8))
    items -= items.mean(axis=0)  # (the fit has no intercept: a constant does not change a ranking)
    truth = rng.normal(size=8)
    counts = np.expm1(items @ truth + 3.0)  # log(1 + count) is linear in the vectors: an exact fit
    direction, r2 = _popularity_direction(items, counts)
    assert r2 > 0.999
    np.testing.assert_allclose(items @ direction, items @ truth - (items @ truth).mean(), atol=1e-6)


def test_too_little_data_is_a_user_error() -> None:
    table = synthetic_ratings(n_customers=2, n_products=3, ratings_per_customer=2)
    with pytest.raises(UserError, match="at least 10"):
        fit(table, TINY)


def test_vector_text_round_trips_float32_exactly() -> None:
    vec = np.random.default_rng(0).normal(size=32).astype(np.float32)
    np.testing.assert_array_equal(parse_vector(format_vector(vec)), vec)
    np.testing.assert_array_equal(parse_vector("[0.5, -1e-3 ,2]"), np.float32([0.5, -0.001, 2.0]))


def test_golden_export_and_reload_give_the_same_embeddings(trained: TrainedModel, tmp_path: Path) -> None:
    version = export_trained(str(tmp_path), trained)
    store = LocalStore(str(tmp_path))
    assert store.get_bytes(LATEST).decode().strip() == version
    bundle = load_bundle(store)  # via the latest pointer
    assert bundle.version == version
    np.testing.assert_array_equal(bundle.item_vectors, trained.item_embeddings())
    np.testing.assert_array_equal(bundle.user_vectors, trained.user_embeddings())
    assert bundle.item_ids == trained.data.item_ids and bundle.user_ids == trained.data.user_ids
    # recomputed from the reloaded weights + scaler parameters (+ item IDs): bit-identical
    user_tower, item_tower = bundle.towers()
    ids = json.loads((tmp_path / version / FILES["item_features"]).read_text())["ids"]
    assert ids == bundle.item_ids
    items = item_tower.embed(
        bundle.item_transform.dense(trained.data.item_columns), np.arange(len(ids), dtype=np.int64)
    )
    np.testing.assert_array_equal(items, bundle.item_vectors)
    # a cold-start customer: features and the learned 'unknown' row (no customer IDs are exported)
    cold = user_tower.embed(
        bundle.user_transform.dense({"city": ["Nowhere"], "country": ["France"], "creditLimit": [5e4]})
    )
    assert cold.shape == (1, 32) and abs(float(np.linalg.norm(cold)) - 1.0) < 1e-5
    # the weights load with weights_only=True, without the customers' ID embeddings
    state = torch.load(tmp_path / version / FILES["model"], weights_only=True)
    assert set(state) == set(trained.state_dict) - {"user_tower.ids.weight"}
    assert "item_tower.ids.weight" in state and "user_tower.unknown" in state
    # the already-bought filter's lists: each customer's training items
    assert bundle.user_bought == trained.data.bought() and sum(map(len, bundle.user_bought)) == len(
        trained.data.rating
    )
    manifest = json.loads((tmp_path / version / MANIFEST).read_text())
    assert manifest["embedding_dim"] == 32 and manifest["metrics"]["rmse"] > 0
    assert manifest["kind"] == "hybrid" == manifest["model"]["kind"]
    assert "logQ" in manifest["training"]["loss"] and "auxiliary" in manifest["training"]["rating"]
    for key in ("ndcg_at_10", "recall_at_10", "cold_ndcg_at_10", "popular_hit_rate_at_10"):
        assert key in manifest["metrics"]
    assert set(manifest["files"]) == set(FILES.values())
    assert [p.id for p in bundle.popular] == [p.id for p in trained.popular]


def test_user_embeddings_csv_has_the_designs_two_columns(trained: TrainedModel, tmp_path: Path) -> None:
    """DESIGN.md: ``user_embeddings.csv`` is ``id,embedding``; the bought lists are a file of their own."""
    version = export_trained(str(tmp_path), trained)
    rows = list(csv.reader(io.StringIO((tmp_path / version / FILES["user_embeddings"]).read_text())))
    assert rows[0] == ["id", "embedding"] and all(len(r) == 2 for r in rows)
    assert [int(r[0]) for r in rows[1:]] == trained.data.user_ids
    bought = list(csv.reader(io.StringIO((tmp_path / version / FILES["user_bought"]).read_text())))
    assert bought[0] == ["id", "bought"] and [int(r[0]) for r in bought[1:]] == trained.data.user_ids
    assert [json.loads(r[1]) for r in bought[1:]] == trained.data.bought()


def test_a_version_of_the_previous_release_with_a_bought_column_still_loads(
    trained: TrainedModel, tmp_path: Path
) -> None:
    version = export_trained(str(tmp_path), trained)
    current = load_bundle(LocalStore(str(tmp_path)), version)
    previous_release_layout(str(tmp_path / version))
    old = load_bundle(LocalStore(str(tmp_path)), version)
    assert old.user_bought == current.user_bought == trained.data.bought()
    assert old.user_ids == current.user_ids
    np.testing.assert_array_equal(old.user_vectors, current.user_vectors)


def test_bought_lists_follow_the_embeddings_ids() -> None:
    """A customer without a row has bought nothing known; a malformed file is refused with its line."""
    from model_store.artifacts import read_user_bought

    body = b'id,bought\n7,"[""a"",""b""]"\n9,[]\n'
    assert read_user_bought(body, "user_bought.csv", [9, 7, 8]) == [[], ["a", "b"], []]
    with pytest.raises(ArtifactError, match="line 2"):
        read_user_bought(b"id,bought\n7,not json\n", "user_bought.csv", [7])
    with pytest.raises(ArtifactError, match="twice"):
        read_user_bought(b"id,bought\n7,[]\n7,[]\n", "user_bought.csv", [7])
    with pytest.raises(ArtifactError, match="header"):
        read_user_bought(b"customer,items\n", "user_bought.csv", [])
    assert FILES["user_bought"] in OPTIONAL_FILES


@pytest.mark.parametrize("key", sorted(FILES.values()))
def test_a_tampered_file_is_refused(trained: TrainedModel, tmp_path: Path, key: str) -> None:
    version = export_trained(str(tmp_path), trained)
    path = tmp_path / version / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fails verification"):
        load_bundle(LocalStore(str(tmp_path)), version)


def test_missing_file_and_unknown_version_are_clear(trained: TrainedModel, tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    with pytest.raises(NotFoundError, match="recsys train"):
        load_bundle(store)
    version = export_trained(str(tmp_path), trained)
    with pytest.raises(NotFoundError, match="not an artifact version"):
        load_bundle(store, "../etc")
    (tmp_path / version / FILES["popular_items"]).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_bundle(store, version)


def test_weights_that_are_not_a_state_dict_are_refused() -> None:
    import io
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("unpickled!",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ArtifactError, match="safely"):
        load_state_dict(buf.getvalue())
