"""Feature spec and fitted feature parameters, as plain data.

The towers read two kinds of columns: categorical ones, one-hot encoded after lower-casing and
stripping (an unknown or missing category encodes as all zeros, like scikit-learn's
``OneHotEncoder(handle_unknown="ignore")``), and numeric ones, standardised with the training mean
and population standard deviation (``StandardScaler``); a missing numeric value becomes the mean,
i.e. 0 after scaling.

A :class:`FeatureTransform` is fitted once at training time, stored as JSON (never pickle) in the
artifacts and in PostgreSQL, and applied with numpy: a dictionary lookup per category and one
vector operation per numeric column, a few microseconds per row instead of a per-row
scikit-learn call. Two encodings are offered: :meth:`FeatureTransform.dense` (the matrix training
uses) and :meth:`FeatureTransform.sparse` (category indices + scaled numbers, which the serving
forward pass turns into a gather instead of a matrix product over a mostly-zero one-hot input).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import ArtifactError

__all__ = [
    "ITEM_SPEC",
    "USER_SPEC",
    "CategoricalParams",
    "FeatureSpec",
    "FeatureTransform",
    "NumericParams",
    "SparseRows",
    "normalise_category",
]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which columns a tower reads (names as in the training data, DESIGN.md)."""

    name: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]


USER_SPEC = FeatureSpec("user", categorical=("city", "country"), numeric=("creditLimit",))
ITEM_SPEC = FeatureSpec(
    "item", categorical=("productLine", "productScale"), numeric=("quantityInStock", "buyPrice", "MSRP")
)


def normalise_category(value: Any) -> str | None:
    """Lower-cased and stripped text; ``None`` for a missing or blank value (encodes as unknown)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip().lower()
    return text or None


def _number(value: Any) -> float:
    """A float, NaN when missing or not a finite number."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


@dataclass(frozen=True, slots=True)
class CategoricalParams:
    column: str
    categories: tuple[str, ...]  # sorted, normalised
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.index.update({c: i for i, c in enumerate(self.categories)})


@dataclass(frozen=True, slots=True)
class NumericParams:
    column: str
    mean: float
    scale: float  # population standard deviation; 1.0 when the column is constant


@dataclass(frozen=True, slots=True)
class SparseRows:
    """Rows encoded for a gather: ``indices[i, j]`` is the one-hot position (in the dense layout) of
    categorical column ``j`` of row ``i``, or -1 when unknown; ``numeric`` holds the scaled numbers."""

    indices: npt.NDArray[np.int64]
    numeric: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FeatureTransform:
    """Fitted parameters of one tower's features. Dense layout: one-hots in column order, then numerics."""

    spec: FeatureSpec
    categorical: tuple[CategoricalParams, ...]
    numeric: tuple[NumericParams, ...]

    # --- fitting --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, spec: FeatureSpec, columns: Mapping[str, Sequence[Any]]) -> FeatureTransform:
        """Fit on training columns (name -> values). Missing values are ignored by the fit."""
        cats = []
        for name in spec.categorical:
            seen = {normalise_category(v) for v in columns[name]}
            seen.discard(None)
            cats.append(CategoricalParams(name, tuple(sorted(s for s in seen if s is not None))))
        nums = []
        for name in spec.numeric:
            values = np.array([_number(v) for v in columns[name]], dtype=np.float64)
            values = values[~np.isnan(values)]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 0.0
            nums.append(NumericParams(name, mean, std if std > 1e-12 else 1.0))
        return cls(spec, tuple(cats), tuple(nums))

    # --- shape ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return sum(len(c.categories) for c in self.categorical) + len(self.numeric)

    @property
    def offsets(self) -> list[int]:
        """Start of each categorical block in the dense layout."""
        out, pos = [], 0
        for c in self.categorical:
            out.append(pos)
            pos += len(c.categories)
        return out

    @property
    def numeric_offset(self) -> int:
        return sum(len(c.categories) for c in self.categorical)

    # --- applying -------------------------------------------------------------------------------
    def sparse_rows(self, rows: Iterable[Sequence[Any]]) -> SparseRows:
        """Encode rows given as tuples in spec order: categoricals first, then numerics."""
        offsets = self.offsets
        n_cat = len(self.categorical)
        idx: list[list[int]] = []
        num: list[list[float]] = []
        for row in rows:
            r_idx = []
            for j, params in enumerate(self.categorical):
                key = normalise_category(row[j])
                pos = -1 if key is None else params.index.get(key, -1)
                r_idx.append(offsets[j] + pos if pos >= 0 else -1)
            idx.append(r_idx)
            num.append([_number(row[n_cat + j]) for j in range(len(self.numeric))])
        indices = np.array(idx, dtype=np.int64).reshape(len(idx), n_cat)
        raw = np.array(num, dtype=np.float64).reshape(len(num), len(self.numeric))
        return SparseRows(indices, self._scale(raw))

    def sparse(self, columns: Mapping[str, Sequence[Any]]) -> SparseRows:
        names = (*self.spec.categorical, *self.spec.numeric)
        return self.sparse_rows(zip(*(columns[n] for n in names), strict=True))

    def _scale(self, raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if not self.numeric:
            return raw
        mean = np.array([p.mean for p in self.numeric], dtype=np.float64)
        scale = np.array([p.scale for p in self.numeric], dtype=np.float64)
        out: npt.NDArray[np.float64] = (raw - mean) / scale
        out[np.isnan(out)] = 0.0  # missing -> the mean
        return out

    def densify(self, rows: SparseRows) -> FloatArray:
        n = rows.indices.shape[0]
        out = np.zeros((n, self.dim), dtype=np.float32)
        for j in range(rows.indices.shape[1]):
            col = rows.indices[:, j]
            hit = col >= 0
            out[np.nonzero(hit)[0], col[hit]] = 1.0
        out[:, self.numeric_offset :] = rows.numeric
        return out

    def dense(self, columns: Mapping[str, Sequence[Any]]) -> FloatArray:
        """The dense float32 matrix (n, dim) training uses."""
        return self.densify(self.sparse(columns))

    # --- plain-data form ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "categorical": [{"column": c.column, "categories": list(c.categories)} for c in self.categorical],
            "numeric": [{"column": p.column, "mean": p.mean, "scale": p.scale} for p in self.numeric],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureTransform:
        try:
            cats = tuple(
                CategoricalParams(str(c["column"]), tuple(str(v) for v in c["categories"]))
                for c in data["categorical"]
            )
            nums = tuple(
                NumericParams(str(p["column"]), float(p["mean"]), float(p["scale"])) for p in data["numeric"]
            )
            spec = FeatureSpec(
                str(data["name"]), tuple(c.column for c in cats), tuple(p.column for p in nums)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"feature parameters are malformed: {exc!r}") from exc
        if any(not math.isfinite(p.mean) or not math.isfinite(p.scale) or p.scale <= 0 for p in nums):
            raise ArtifactError("feature parameters hold a non-finite mean or a non-positive scale")
        return cls(spec, cats, nums)
