"""The user tower as serving runs it: NumPy arrays, no torch.

The model is defined once, by the torch :class:`model_store.model.Tower` that training fits; this is
its serving copy, for the one way serving calls it: feature rows without IDs (every row an unknown
customer, so a hybrid tower adds its learned ``unknown`` vector). Linear -> ReLU (per hidden layer)
-> Linear [+ ``unknown``] -> L2 normalisation, computed in float64 and rounded to float32 at the end,
as :class:`model_store.model.ServingTower` computes it. A test trains models and checks that the two
agree (``tests/unit/model_store/test_serving_tower.py``: within 1e-6, the same top-10 items).

Row independence, by construction: a row's vector never depends on the other rows of its batch
(a request gets the same vector alone or in a batch of 500, which makes the batch path give
exactly the one-by-one path's answer). A BLAS matrix product does not promise it (its summation
order may change with the number of rows), so every layer is computed here with elementwise
operations only: ``h = b``, then ``h += x[:, j] * W[:, j]`` for each of the row's non-zero inputs
``j`` in increasing order, so each output element is the same sequence of IEEE operations whatever
the batch (:func:`_linear` gathers those per row, or passes over the batch's non-zero columns; a
zero product added on the way changes at most the sign of a zero sum, and each layer ends by
adding ``+0.0``, which makes every zero ``+0.0``). The squared norm is summed the same way, column
by column. Cost, measured against the torch forward it replaces (one thread, a 64-wide tower over
~120 one-hot inputs): 2-4x its time (~0.15 ms for 1 row, ~2.6 ms for 500), a few microseconds per
event in a recommendation stage of hundreds (docs/model.md).

The weights travel as plain arrays: :func:`tower_to_npz` writes an ``.npz`` (``np.savez``; what
``recsys load-vectors`` stores in ``model_versions.user_tower``) and :func:`tower_from_npz` reads it
with ``allow_pickle=False``, checking every array's name, dtype, shape and finiteness: malformed
bytes are an ``ArtifactError``, never a pickle load.

Layout of the ``.npz``: ``weight_<i>`` (out, in) and ``bias_<i>`` (out,) for each Linear layer
``i = 0..n-1`` in order, and ``unknown`` (out,) for a hybrid tower; float32 or float64.
"""

from __future__ import annotations

import io
import itertools
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from core.errors import ArtifactError

__all__ = ["MAX_NPZ_BYTES", "NumpyTower", "UserTower", "tower_from_npz", "tower_to_npz"]

MAX_NPZ_BYTES = 256 * 1024 * 1024  # far above any user tower (a 64-wide tower over 10k inputs: 5 MB)
_NAME = re.compile(r"^(weight|bias)_(\d{1,3})$")
Float64Array = npt.NDArray[np.float64]


class UserTower(Protocol):
    """What a version's state asks of its user tower: :class:`NumpyTower` in serving (a benchmark
    hands in the torch ``model_store.model.ServingTower`` as its reference)."""

    @property
    def in_dim(self) -> int: ...

    def embed(self, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]: ...


class NumpyTower:
    """A tower's Linear layers (``layers``: (weight (out, in), bias (out,)) in order, ReLU between
    them) and, hybrid, its ``unknown`` vector (out,), held in float64. Immutable after construction;
    :meth:`embed` may run in any thread."""

    def __init__(
        self,
        layers: Sequence[tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]]],
        unknown: npt.NDArray[np.floating[Any]] | None = None,
    ) -> None:
        if not layers:
            raise ArtifactError("the tower has no layers")
        checked: list[tuple[Float64Array, Float64Array]] = []
        for i, (weight, bias) in enumerate(layers):
            w, b = np.asarray(weight), np.asarray(bias)
            if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0 or b.shape != (w.shape[0],):
                raise ArtifactError(
                    f"layer {i} has the shapes {w.shape} and {b.shape}, expected (out, in) and (out,)"
                )
            # transposed, (in, out): row j holds input j's weights to every output, contiguous
            checked.append((np.ascontiguousarray(w.T, dtype=np.float64), np.array(b, dtype=np.float64)))
        for i, ((prev, _), (nxt, _)) in enumerate(itertools.pairwise(checked)):
            if nxt.shape[0] != prev.shape[1]:
                raise ArtifactError(
                    f"layers {i} and {i + 1} do not chain: {prev.shape[1]} outputs -> {nxt.shape[0]} inputs"
                )
        out_dim = checked[-1][0].shape[1]
        if unknown is not None and np.shape(unknown) != (out_dim,):
            raise ArtifactError(f"unknown has the shape {np.shape(unknown)}, expected ({out_dim},)")
        for name, value in (
            *((f"layer {i}", a) for i, pair in enumerate(checked) for a in pair),
            *((("unknown", unknown),) if unknown is not None else ()),
        ):
            if not np.isfinite(value).all():
                raise ArtifactError(f"{name} holds non-finite values")
        self._layers = tuple(checked)
        self._unknown: Float64Array | None = None if unknown is None else np.array(unknown, dtype=np.float64)
        self.in_dim = int(checked[0][0].shape[0])
        self.out_dim = int(out_dim)
        self.hidden = tuple(int(w.shape[1]) for w, _ in checked[:-1])

    @property
    def hybrid(self) -> bool:
        return self._unknown is not None

    def arrays(self) -> dict[str, Float64Array]:
        """The weights by their ``.npz`` names (float64 copies, (out, in) weights)."""
        out: dict[str, Float64Array] = {}
        for i, (wt, b) in enumerate(self._layers):
            out[f"weight_{i}"] = wt.T.copy()
            out[f"bias_{i}"] = b.copy()
        if self._unknown is not None:
            out["unknown"] = self._unknown.copy()
        return out

    def embed(self, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """L2-normalised float32 embeddings of dense feature rows (n, in_dim), each row as an
        unknown ID; a row's result does not depend on the other rows (module docstring)."""
        result: npt.NDArray[np.float32] = self.embed_float64(rows).astype(np.float32)
        return result

    def embed_float64(self, rows: npt.NDArray[np.floating[Any]]) -> Float64Array:
        """:meth:`embed` before its rounding to float32: already row-independent bit for bit (what
        the tests check; a rounding to float32 would hide most differences)."""
        if rows.ndim != 2 or rows.shape[1] != self.in_dim:
            raise ValueError(f"the tower reads (n, {self.in_dim}) rows, got {rows.shape}")
        h: Float64Array = np.asarray(rows, dtype=np.float64)
        last = len(self._layers) - 1
        for i, (wt, b) in enumerate(self._layers):
            h = _linear(h, wt, b)
            if i < last:
                np.maximum(h, 0.0, out=h)
        if self._unknown is not None:
            h += self._unknown
        squared = np.zeros(h.shape[0], dtype=np.float64)
        for j in range(h.shape[1]):  # one column at a time, in order: a fixed sum per row
            squared += h[:, j] * h[:, j]
        norm = np.maximum(np.sqrt(squared), 1e-12)  # torch.nn.functional.normalize's eps
        out: Float64Array = h / norm[:, None]
        return out


def _linear(x: Float64Array, wt: Float64Array, b: Float64Array) -> Float64Array:
    """``x @ wt + b``, each output element summed in one order whatever the batch: ``b``, then the
    products of the row's non-zero inputs in increasing column order, then ``+0.0`` (a zero sum's
    sign made positive).

    Two ways to the same sums, the cheaper for the batch: a gather per non-zero slot of the rows
    (sparse rows: the one-hot first layer, a few non-zeros each), or a pass per column that is
    non-zero somewhere in the batch (dense rows: the hidden layers). Either adds, for a row, its
    non-zero products in column order and zero products (which change at most a zero's sign)."""
    n = x.shape[0]
    h = np.empty((n, wt.shape[1]), dtype=np.float64)
    h[:] = b
    rows, cols = np.nonzero(x)  # row-major: each row's columns in increasing order
    counts = np.bincount(rows, minlength=n)
    width = int(counts.max()) if n else 0
    columns = np.flatnonzero(np.bincount(cols, minlength=x.shape[1]))
    if width * 2 < columns.size:  # sparse rows: one gather per slot
        slot = np.arange(rows.size) - (np.cumsum(counts) - counts)[rows]
        index = np.zeros((n, width), dtype=np.intp)  # padding: column 0 times a zero
        value = np.zeros((n, width), dtype=np.float64)
        index[rows, slot] = cols
        value[rows, slot] = x[rows, cols]
        for s in range(width):
            h += value[:, s : s + 1] * wt[index[:, s]]
    else:  # dense rows: one pass per column
        product = np.empty_like(h)
        for j in columns.tolist():
            np.multiply(x[:, j : j + 1], wt[j], out=product)
            h += product
    h += 0.0
    return h


def tower_to_npz(tower: NumpyTower) -> bytes:
    """The tower's arrays as the bytes of an ``.npz`` (``np.savez``, uncompressed, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **tower.arrays())
    return buf.getvalue()


def tower_from_npz(data: bytes) -> NumpyTower:
    """The tower of an ``.npz`` written by :func:`tower_to_npz` (or by ``np.savez`` with the names
    of the module docstring). Raises ``ArtifactError`` for anything else: not an ``.npz``, truncated,
    object arrays (never unpickled), unknown or missing names, wrong dtypes or shapes, non-finite
    values."""
    if len(data) > MAX_NPZ_BYTES:
        raise ArtifactError(f"the tower's arrays take {len(data)} bytes, more than {MAX_NPZ_BYTES}")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ArtifactError("the tower's arrays are not an .npz archive (one array without names)")
        with loaded:
            arrays = {name: np.asarray(loaded[name]) for name in loaded.files}
    except ArtifactError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ArtifactError(f"the tower's arrays cannot be read: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # a damaged archive raises what its decompressor raises (zlib.error, ...)
        raise ArtifactError(f"the tower's arrays cannot be read: {exc!r}") from exc
    return _from_arrays(arrays)


def _from_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> NumpyTower:
    for name, value in arrays.items():
        if value.dtype not in (np.float32, np.float64):
            raise ArtifactError(f"the tower's array {name!r} is of dtype {value.dtype}, not float32/float64")
    layers: dict[int, dict[str, npt.NDArray[Any]]] = {}
    for name, value in arrays.items():
        match = _NAME.match(name)
        if match is None:
            if name != "unknown":
                raise ArtifactError(f"the tower's arrays hold an unexpected name {name!r}")
            continue
        layers.setdefault(int(match[2]), {})[match[1]] = value
    if sorted(layers) != list(range(len(layers))):
        raise ArtifactError(f"the tower's layers are not numbered 0..n-1: {sorted(layers)}")
    for i in range(len(layers)):
        missing = {"weight", "bias"} - set(layers[i])
        if missing:
            raise ArtifactError(f"the tower's layer {i} lacks its {' and '.join(sorted(missing))}")
    return NumpyTower(
        [(layers[i]["weight"], layers[i]["bias"]) for i in range(len(layers))], arrays.get("unknown")
    )
