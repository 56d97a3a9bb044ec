"""The feature parameters are scikit-learn's fit; applying them with numpy gives exactly what the
fitted ``ColumnTransformer`` gives on held-out rows; they round-trip as JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.errors import ArtifactError
from model_store.features import (
    ITEM_SPEC,
    USER_SPEC,
    FeatureSpec,
    FeatureTransform,
    fit_column_transformer,
    normalise_category,
    sklearn_rows,
)
from model_store.testing import synthetic_ratings


def _columns() -> dict[str, list[Any]]:
    return synthetic_ratings(n_customers=40, n_products=30, ratings_per_customer=8, seed=3).to_pydict()


Columns = dict[str, list[Any]]


def _sklearn(
    spec_cats: tuple[str, ...], spec_nums: tuple[str, ...], fit_cols: Columns, apply_cols: Columns
) -> np.ndarray[Any, Any]:
    cat_fit = np.array([[normalise_category(v) for v in fit_cols[c]] for c in spec_cats], dtype=object).T
    cat_apply = np.array(
        [[normalise_category(v) or "<missing>" for v in apply_cols[c]] for c in spec_cats], dtype=object
    ).T
    enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(cat_fit)
    num_fit = np.array([fit_cols[c] for c in spec_nums], dtype=np.float64).T
    num_apply = np.array([[np.nan if v is None else v for v in apply_cols[c]] for c in spec_nums]).T
    scaler = StandardScaler().fit(num_fit)
    scaled = scaler.transform(num_apply)
    scaled[np.isnan(scaled)] = 0.0
    return np.hstack([enc.transform(cat_apply), scaled])


def _without_missing_columns(
    spec: FeatureSpec, fitted: Any, out: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """The fitted transformer's output minus the columns of a missing category (ours has none), NaN
    (a missing number) as 0 (the mean)."""
    keep = []
    pos = 0
    if spec.categorical:
        for values in fitted.named_transformers_["onehot"].categories_:
            keep += [pos + j for j, v in enumerate(values) if isinstance(v, str)]
            pos += len(values)
    keep += list(range(pos, out.shape[1]))
    return np.nan_to_num(out[:, keep].astype(np.float64), nan=0.0)


@pytest.mark.parametrize("spec", [USER_SPEC, ITEM_SPEC], ids=["user", "item"])
def test_numpy_transform_equals_the_fitted_column_transformer_on_held_out_rows(spec: FeatureSpec) -> None:
    cols = _columns()
    n = len(cols["city"])
    train = {c: v[: n // 2] for c, v in cols.items()}
    held_out = {c: v[n // 2 :] for c, v in cols.items()}
    # messy, unknown and missing values among the held-out rows
    for name in spec.categorical:
        held_out[name] = [f" {str(v).upper()} " if i % 5 == 0 else v for i, v in enumerate(held_out[name])]
        held_out[name][1], held_out[name][2] = "never seen", None
    for name in spec.numeric:
        held_out[name][3] = None
    train[spec.categorical[0]][0] = None  # a missing category in the fit too
    fitted = fit_column_transformer(spec, train)
    ours = FeatureTransform.from_column_transformer(spec, fitted)
    assert ours == FeatureTransform.fit(spec, train)
    expected = _without_missing_columns(spec, fitted, fitted.transform(sklearn_rows(spec, held_out)))
    got = ours.dense(held_out)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got[1:3, : ours.numeric_offset].sum() == 0  # unknown and missing categories are zeros
    assert got[3, ours.numeric_offset :].tolist() == [0.0] * len(spec.numeric)  # missing -> the mean


@pytest.mark.parametrize("spec", [USER_SPEC, ITEM_SPEC], ids=["user", "item"])
def test_dense_matches_sklearn_on_training_data(spec: FeatureSpec) -> None:
    cols = _columns()
    ours = FeatureTransform.fit(spec, cols)
    expected = _sklearn(spec.categorical, spec.numeric, cols, cols)
    got = ours.dense(cols)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_missing_and_messy_values_match_sklearn_ignore() -> None:
    cols = _columns()
    ours = FeatureTransform.fit(USER_SPEC, cols)
    city0, country0 = cols["city"][0], cols["country"][0]
    apply = {
        "city": [f"  {str(city0).upper()} ", "Atlantis", None, ""],
        "country": [country0, "  " + str(country0).lower(), "Narnia", None],
        "creditLimit": [1000.0, None, float("nan"), 250_000.0],
    }
    expected = _sklearn(USER_SPEC.categorical, USER_SPEC.numeric, cols, apply)
    np.testing.assert_allclose(ours.dense(apply), expected, rtol=1e-5, atol=1e-5)
    dense = ours.dense(apply)
    assert dense[0, : ours.numeric_offset].sum() == 2  # case and spaces do not matter
    assert dense[1, -1] == 0.0  # missing number -> the mean -> 0


def test_sparse_rows_index_the_dense_layout() -> None:
    cols = _columns()
    ours = FeatureTransform.fit(ITEM_SPEC, cols)
    rows = ours.sparse(cols)
    dense = ours.dense(cols)
    for i in range(5):
        hot = sorted(int(j) for j in rows.indices[i] if j >= 0)
        assert hot == list(np.nonzero(dense[i, : ours.numeric_offset])[0])


def test_json_round_trip_is_exact_and_plain() -> None:
    cols = _columns()
    ours = FeatureTransform.fit(ITEM_SPEC, cols)
    text = json.dumps(ours.to_json())
    again = FeatureTransform.from_json(json.loads(text))
    assert again == ours
    np.testing.assert_array_equal(again.dense(cols), ours.dense(cols))


def test_constant_column_does_not_divide_by_zero() -> None:
    ours = FeatureTransform.fit(USER_SPEC, {"city": ["a", "b"], "country": ["x", "x"], "creditLimit": [5, 5]})
    assert ours.numeric[0].scale == 1.0
    assert ours.dense({"city": ["a"], "country": ["x"], "creditLimit": [5]}).tolist() == [[1, 0, 1, 0]]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "user", "categorical": [], "numeric": [{"column": "x", "mean": 0, "scale": 0}]},
        {"name": "user", "categorical": [{"column": "x"}], "numeric": []},
        {"categorical": [], "numeric": []},
    ],
)
def test_malformed_parameters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ArtifactError):
        FeatureTransform.from_json(bad)
