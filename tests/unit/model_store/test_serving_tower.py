"""The NumPy serving tower: it agrees with the torch model it copies, a row's vector does not depend
on its batch, and its stored arrays round-trip and refuse anything malformed without unpickling."""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import ArtifactError
from model_store.model import ServingTower, Tower, numpy_tower
from model_store.serving import NumpyTower, tower_from_npz, tower_to_npz
from model_store.testing import synthetic_ratings
from model_store.training import TrainedModel, fit
from recsys.settings import TrainSettings

TINY = TrainSettings(epochs=8, hidden=[16], batch_size=128, seed=11)
ODD_BATCHES = (1, 3, 7, 33, 129, 501)


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return fit(synthetic_ratings(n_customers=60, n_products=40, ratings_per_customer=12, seed=5), TINY)


def _random_tower(in_dim: int, hidden: tuple[int, ...], hybrid: bool, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict of random weights of the real shapes (``user_tower.*``; hybrid with an ID table)."""
    torch.manual_seed(seed)
    tower = Tower(in_dim, hidden, 32, hybrid=hybrid, n_ids=50 if hybrid else 0)
    if tower.unknown is not None:
        with torch.no_grad():
            tower.unknown.normal_(0.0, 0.3)
    return {f"user_tower.{k}": v for k, v in tower.state_dict().items()}


def _feature_rows(n: int, in_dim: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Rows shaped like the user features: two one-hot blocks (some rows with no category known)
    and one standardised number, float32 as ``FeatureTransform.densify`` gives them."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, in_dim), dtype=np.float32)
    split = (in_dim - 1) * 3 // 4
    city = rng.integers(0, split, n)
    country = rng.integers(split, in_dim - 1, n)
    known_city, known_country = rng.random(n) < 0.9, rng.random(n) < 0.95
    rows[np.flatnonzero(known_city), city[known_city]] = 1.0
    rows[np.flatnonzero(known_country), country[known_country]] = 1.0
    rows[:, -1] = rng.normal(0.0, 1.0, n).astype(np.float32)
    rows[rng.random(n) < 0.1, -1] = 0.0  # a missing credit limit: the mean
    return rows


def _cases(trained: TrainedModel) -> list[tuple[str, dict[str, torch.Tensor], np.ndarray[Any, Any]]]:
    n = 2000
    dim = trained.user_transform.dim
    return [
        (
            "trained hybrid",
            trained.export_state_dict(),
            trained.user_transform.dense(trained.data.user_columns),
        ),
        ("trained hybrid, drawn rows", trained.export_state_dict(), _feature_rows(n, dim, 1)),
        ("random features, default shape", _random_tower(121, (64,), False, 2), _feature_rows(n, 121, 3)),
        ("random hybrid, default shape", _random_tower(121, (64,), True, 4), _feature_rows(n, 121, 5)),
        ("random hybrid, two hidden layers", _random_tower(57, (48, 24), True, 6), _feature_rows(n, 57, 7)),
    ]


def test_the_numpy_tower_agrees_with_the_torch_tower(trained: TrainedModel) -> None:
    """The drift test: the serving copy against the torch definition (run as ``ServingTower``), over
    many feature rows: within 1e-6, and each row's top-10 items the same."""
    items = trained.item_embeddings()
    for name, state, rows in _cases(trained):
        reference = ServingTower.from_state_dict(state, "user_tower").embed(rows)
        served = numpy_tower(state, "user_tower").embed(rows)
        assert served.shape == reference.shape == (rows.shape[0], 32) and served.dtype == np.float32
        assert float(np.abs(served - reference).max()) <= 1e-6, name
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-6)
        if rows.shape[1] == trained.user_transform.dim:  # the trained catalog: the same top 10
            top = np.argsort(-(items @ served.T), axis=0, kind="stable")[:10]
            top_reference = np.argsort(-(items @ reference.T), axis=0, kind="stable")[:10]
            np.testing.assert_array_equal(top, top_reference, err_msg=name)


def test_the_training_module_in_float32_agrees_too(trained: TrainedModel) -> None:
    """Against the torch ``Tower`` as training runs it (float32, no IDs: every customer unknown)."""
    state = trained.export_state_dict()
    rows = trained.user_transform.dense(trained.data.user_columns)
    tower = Tower.from_state_dict(state, "user_tower").eval()
    with torch.no_grad():
        reference = tower(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(numpy_tower(state, "user_tower").embed(rows), reference, atol=1e-5)


def test_the_hybrid_unknown_vector_is_added(trained: TrainedModel) -> None:
    state = trained.export_state_dict()
    tower = numpy_tower(state, "user_tower")
    assert tower.hybrid and tower.in_dim == trained.user_transform.dim
    arrays = tower.arrays()
    without = NumpyTower([(arrays["weight_0"], arrays["bias_0"]), (arrays["weight_1"], arrays["bias_1"])])
    rows = trained.user_transform.dense(trained.data.user_columns)
    assert not np.allclose(tower.embed(rows), without.embed(rows), atol=1e-3)


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_row_gets_the_same_bits_alone_or_in_any_batch(hybrid: bool) -> None:
    """Odd batch sizes, sparse (one-hot) and dense rows (the two ways ``_linear`` sums): every row
    of every batch is bit for bit its vector alone."""
    tower = numpy_tower(_random_tower(121, (64, 32), hybrid, 8), "user_tower")
    rng = np.random.default_rng(9)
    sparse = _feature_rows(max(ODD_BATCHES), 121, 10)
    dense = rng.normal(0.0, 1.0, (max(ODD_BATCHES), 121)).astype(np.float32)
    mixed = np.where(rng.random(dense.shape) < 0.4, dense, 0.0).astype(np.float32)
    for rows in (sparse, dense, mixed):
        # float64, before the rounding to float32 that would hide most differences
        alone = np.concatenate([tower.embed_float64(rows[i : i + 1]) for i in range(rows.shape[0])])
        for size in ODD_BATCHES:
            for start in (0, 5, rows.shape[0] - size):
                batch = tower.embed_float64(rows[start : start + size])
                np.testing.assert_array_equal(
                    batch.view(np.uint64),
                    alone[start : start + size].view(np.uint64),
                    err_msg=f"{size}@{start}",
                )
                np.testing.assert_array_equal(
                    tower.embed(rows[start : start + size]), alone[start : start + size].astype(np.float32)
                )


def test_a_zero_row_and_an_empty_batch() -> None:
    tower = numpy_tower(_random_tower(9, (4,), False, 12), "user_tower")
    assert tower.embed(np.zeros((0, 9), dtype=np.float32)).shape == (0, 32)
    zero = tower.embed(np.zeros((3, 9), dtype=np.float32))
    assert np.isfinite(zero).all() and len({row.tobytes() for row in zero}) == 1
    with pytest.raises(ValueError, match=r"\(n, 9\)"):
        tower.embed(np.zeros((2, 8), dtype=np.float32))


# --- the stored arrays -------------------------------------------------------------------------------


@pytest.mark.parametrize("hybrid", [False, True])
def test_the_arrays_round_trip_exactly(hybrid: bool) -> None:
    state = _random_tower(30, (16,), hybrid, 13)
    tower = numpy_tower(state, "user_tower")
    data = tower_to_npz(tower)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # a plain .npz: one .npy per array
        names = sorted(archive.namelist())
    assert names == sorted(
        ["weight_0.npy", "bias_0.npy", "weight_1.npy", "bias_1.npy"] + ["unknown.npy"] * hybrid
    )
    again = tower_from_npz(data)
    assert (again.in_dim, again.hidden, again.out_dim, again.hybrid) == (30, (16,), 32, hybrid)
    for key, value in tower.arrays().items():
        np.testing.assert_array_equal(again.arrays()[key], value)
    np.testing.assert_array_equal(
        state["user_tower.layers.0.weight"].numpy().astype(np.float64), again.arrays()["weight_0"]
    )
    rows = _feature_rows(50, 30, 14)
    np.testing.assert_array_equal(again.embed(rows), tower.embed(rows))


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


FIRED: list[str] = []


def _fire(what: str) -> None:
    FIRED.append(what)


class _Trap:
    """Unpickling this calls :func:`_fire` (by reference): it must never happen."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fire, ("unpickled",))


def test_the_trap_fires_when_unpickled() -> None:
    FIRED.clear()
    pickle.loads(pickle.dumps(_Trap()))
    assert FIRED == ["unpickled"]


def _good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "weight_0": rng.normal(size=(4, 3)).astype(np.float32),
        "bias_0": np.zeros(4, dtype=np.float32),
        "weight_1": rng.normal(size=(2, 4)).astype(np.float32),
        "bias_1": np.zeros(2, dtype=np.float32),
    }


def _pickled_object_array() -> bytes:
    arrays: dict[str, Any] = {**_good(), "unknown": np.array([_Trap(), _Trap()], dtype=object)}
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


def _raw_pickle() -> bytes:
    return pickle.dumps(_Trap())


def _truncated() -> bytes:
    data = _npz(**_good())
    return data[: len(data) // 2]


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2)))
    return buf.getvalue()


MALFORMED = {
    "empty": (lambda: b"", "cannot be read"),
    "not an archive": (lambda: b"\x00not numpy at all" * 10, "cannot be read"),
    "truncated": (_truncated, "cannot be read"),
    "a pickle": (_raw_pickle, "cannot be read"),
    "an object array": (_pickled_object_array, "cannot be read"),
    "a single .npy": (_npy, "not an .npz"),
    "a wrong shape": (
        lambda: _npz(**{**_good(), "bias_0": np.zeros(5, np.float32)}),
        "layer 0 has the shapes",
    ),
    "layers that do not chain": (
        lambda: _npz(**{**_good(), "weight_1": np.zeros((2, 5), np.float32)}),
        "do not chain",
    ),
    "a missing bias": (lambda: _npz(**{k: v for k, v in _good().items() if k != "bias_1"}), "lacks its bias"),
    "a gap in the layers": (
        lambda: _npz(**{k.replace("_1", "_2"): v for k, v in _good().items()}),
        "not numbered 0..n-1",
    ),
    "an unexpected name": (lambda: _npz(**_good(), extra=np.zeros(2)), "unexpected name 'extra'"),
    "integers": (lambda: _npz(**{**_good(), "bias_0": np.zeros(4, np.int64)}), "dtype int64"),
    "a wrong unknown": (lambda: _npz(**_good(), unknown=np.zeros(3, np.float32)), "unknown has the shape"),
    "non-finite weights": (
        lambda: _npz(**{**_good(), "bias_1": np.array([0.0, np.nan], np.float32)}),
        "non-finite",
    ),
    "no layers": (_npz, "no layers"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_arrays_are_a_clear_artifact_error_never_a_pickle_load(case: str) -> None:
    make, message = MALFORMED[case]
    data = make()
    FIRED.clear()
    with pytest.raises(ArtifactError, match=message):
        tower_from_npz(data)
    assert FIRED == []
