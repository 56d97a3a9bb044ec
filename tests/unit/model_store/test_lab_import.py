"""Artifacts made the lab's way (state_dict + pickled scikit-learn scalers) import into our layout."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

from core.errors import ArtifactError
from infra.objectstore import LocalStore
from model_store.artifacts import load_bundle
from model_store.lab_import import import_lab_artifacts
from model_store.testing import synthetic_ratings
from recsys.cli import main


class LabModel(nn.Module):
    """How the lab's notebook might have written it: other names, different tower widths."""

    def __init__(self, user_dim: int, item_dim: int) -> None:
        super().__init__()
        self.user_model = nn.Sequential(nn.Linear(user_dim, 48), nn.ReLU(), nn.Linear(48, 32))
        self.item_model = nn.Sequential(nn.Linear(item_dim, 24), nn.ReLU(), nn.Linear(24, 32))

    def embed(self, tower: nn.Module, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        with torch.no_grad():
            out = nn.functional.normalize(tower(torch.from_numpy(x.astype(np.float32))), dim=-1)
        return out.numpy()


def _vec(v: np.ndarray[Any, Any]) -> str:
    return "[" + ", ".join(f"{x:.8f}" for x in v) + "]"


def _lab_artifacts(root: Path) -> dict[str, Any]:
    cols = synthetic_ratings(n_customers=30, n_products=25, ratings_per_customer=6, seed=9).to_pydict()
    users = {c: i for i, c in reversed(list(enumerate(cols["customerNumber"])))}
    items = {p: i for i, p in reversed(list(enumerate(cols["productCode"])))}
    u_rows, i_rows = list(users.values()), list(items.values())
    u_cat = np.array([[cols["city"][r], cols["country"][r]] for r in u_rows], dtype=object)
    u_num = np.array([[cols["creditLimit"][r]] for r in u_rows])
    i_cat = np.array([[cols["productLine"][r], cols["productScale"][r]] for r in i_rows], dtype=object)
    i_num = np.array(
        [[cols["quantityInStock"][r], cols["buyPrice"][r], cols["MSRP"][r]] for r in i_rows], dtype=float
    )
    u_enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(u_cat)
    u_sc = StandardScaler().fit(u_num)
    i_enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(i_cat)
    i_sc = StandardScaler().fit(i_num)
    u_x = np.hstack([u_enc.transform(u_cat), u_sc.transform(u_num)])
    i_x = np.hstack([i_enc.transform(i_cat), i_sc.transform(i_num)])
    torch.manual_seed(0)
    model = LabModel(u_x.shape[1], i_x.shape[1])
    (root / "model").mkdir(parents=True)
    (root / "scalers").mkdir()
    (root / "embeddings").mkdir()
    torch.save(model.state_dict(), root / "model" / "best_model.pth")
    (root / "scalers" / "user_preprocessors.pkl").write_bytes(
        pickle.dumps({"encoder": u_enc, "scaler": u_sc})
    )
    (root / "scalers" / "item_encoder.pkl").write_bytes(pickle.dumps(i_enc))
    (root / "scalers" / "item_scaler.pkl").write_bytes(pickle.dumps(i_sc))
    u_emb, i_emb = model.embed(model.user_model, u_x), model.embed(model.item_model, i_x)
    (root / "embeddings" / "user_embeddings.csv").write_text(
        "id,embedding\n" + "".join(f'{c},"{_vec(v)}"\n' for c, v in zip(users, u_emb, strict=True))
    )
    (root / "embeddings" / "item_embeddings.csv").write_text(
        "id,embedding\n" + "".join(f'{p},"{_vec(v)}"\n' for p, v in zip(items, i_emb, strict=True))
    )
    return {
        "cols": cols,
        "u_rows": u_rows,
        "i_rows": i_rows,
        "u_emb": u_emb,
        "i_emb": i_emb,
        "items": list(items),
    }


def test_import_refuses_without_trust_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _lab_artifacts(tmp_path / "lab")
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        import_lab_artifacts(str(tmp_path / "lab"), str(tmp_path / "out"), trust_pickle=False)
    code = main(["import-lab-artifacts", str(tmp_path / "lab"), "--artifacts", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unpickling runs any code" in err and "--trust-pickle" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_import_converts_to_plain_parameters_that_reproduce_the_lab(tmp_path: Path) -> None:
    lab = _lab_artifacts(tmp_path / "lab")
    code = main(
        [
            "import-lab-artifacts",
            str(tmp_path / "lab"),
            "--trust-pickle",
            "--artifacts",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    bundle = load_bundle(LocalStore(str(tmp_path / "out")))  # verified like any version
    assert not list((tmp_path / "out").rglob("*.pkl"))
    assert bundle.config.hidden == (48,) and bundle.config.item_hidden == (24,)
    np.testing.assert_allclose(bundle.item_vectors, lab["i_emb"], atol=1e-7)
    assert bundle.item_ids == lab["items"]
    cols = lab["cols"]
    user_tower, item_tower = bundle.towers()
    # our transform (lower-cased categories, plain JSON) + our forward == the lab's pipeline
    u_columns = {c: [cols[c][r] for r in lab["u_rows"]] for c in ("city", "country", "creditLimit")}
    u_columns["city"] = [f"  {c.upper()} " for c in u_columns["city"]]
    ours = user_tower.embed(bundle.user_transform.dense(u_columns))
    np.testing.assert_allclose(ours, lab["u_emb"], atol=1e-5)
    i_columns = {
        c: [cols[c][r] for r in lab["i_rows"]]
        for c in ("productLine", "productScale", "quantityInStock", "buyPrice", "MSRP")
    }
    ours_items = item_tower.embed(bundle.item_transform.dense(i_columns))
    np.testing.assert_allclose(ours_items, lab["i_emb"], atol=1e-5)


def test_a_pickle_that_is_not_a_scaler_is_refused(tmp_path: Path) -> None:
    _lab_artifacts(tmp_path / "lab")
    (tmp_path / "lab" / "scalers" / "extra.pkl").write_bytes(pickle.dumps({"user": [1, 2, 3]}))
    with pytest.raises(ArtifactError, match="not a fitted"):
        import_lab_artifacts(str(tmp_path / "lab"), str(tmp_path / "out"), trust_pickle=True)


def _lake(root: Path, table: Any) -> str:
    import pyarrow.parquet as pq

    from infra.lake import LakeRun, new_run_id, publish_run, run_prefix

    store = LocalStore(str(root))
    run_id = new_run_id()
    key = run_prefix(run_id) + "part-00000.parquet"
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / key)
    publish_run(
        store,
        LakeRun(
            run_id=run_id,
            created_at=datetime.now(UTC),
            row_count=table.num_rows,
            files=[key],
            schema={f.name: str(f.type) for f in table.schema},
            source="test",
        ),
    )
    return str(root)


def test_a_lake_gives_the_imported_version_popular_items_ranked_as_training_ranks_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = _lab_artifacts(tmp_path / "lab")
    ratings = synthetic_ratings(n_customers=30, n_products=25, ratings_per_customer=6, seed=9)
    lake = _lake(tmp_path / "lake", ratings)
    out = str(tmp_path / "out")
    assert (
        main(
            [
                "import-lab-artifacts",
                str(tmp_path / "lab"),
                "--trust-pickle",
                "--artifacts",
                out,
                "--lake",
                lake,
            ]
        )
        == 0
    )
    assert "no popular items" not in capsys.readouterr().out
    bundle = load_bundle(LocalStore(out))
    assert sorted(p.id for p in bundle.popular) == sorted(lab["items"])
    # most purchased first (a rated pair is a purchase), ties by the damped mean rating (5
    # pseudo-ratings at the global mean)
    cols = ratings.to_pydict()
    prior = float(np.mean(cols["productRating"]))
    damped = {
        code: (
            sum(r for c, r in zip(cols["productCode"], cols["productRating"], strict=True) if c == code)
            + 5 * prior
        )
        / (cols["productCode"].count(code) + 5)
        for code in lab["items"]
    }
    ranked = sorted(damped, key=lambda c: (-cols["productCode"].count(c), -damped[c]))
    assert [p.id for p in bundle.popular][:3] == ranked[:3]
    assert bundle.popular[0].count == cols["productCode"].count(bundle.popular[0].id)

    main(["import-lab-artifacts", str(tmp_path / "lab"), "--trust-pickle", "--artifacts", out])
    assert "no popular items" in capsys.readouterr().out  # said, not silent


def test_a_lake_of_another_shop_is_refused(tmp_path: Path) -> None:
    lab = _lab_artifacts(tmp_path / "lab")
    other = synthetic_ratings(n_customers=5, n_products=4, ratings_per_customer=2, seed=1)
    codes = [f"OTHER_{c}" for c in other.column("productCode").to_pylist()]
    other = other.set_column(other.schema.get_field_index("productCode"), "productCode", [codes])
    lake = _lake(tmp_path / "lake", other)
    with pytest.raises(ArtifactError, match=f"rates none of the {len(lab['items'])} imported items"):
        import_lab_artifacts(str(tmp_path / "lab"), str(tmp_path / "out"), trust_pickle=True, lake_uri=lake)
