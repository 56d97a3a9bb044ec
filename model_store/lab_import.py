"""Import artifacts made the lab's way (a state_dict + scikit-learn ``.pkl`` scalers) into our layout.

The lab pickled its fitted ``OneHotEncoder`` / ``StandardScaler`` objects. Unpickling runs whatever
code the file names, so it happens only when the operator says they trust the source
(``trust_pickle=True``); the result is stored as plain parameters and never unpickled again.

What is read from the source folder (any depth):

- ``*.pth``: the state_dict (``torch.load(weights_only=True)``; ``best_model.pth`` preferred). Its
  Linear layers are grouped by their top-level module; the group whose first layer reads the user
  features' width is the user tower, the other the item tower. Layers other than Linear (batch
  norm...) cannot be reproduced by our towers and are refused.
- ``*.pkl``: fitted ``OneHotEncoder``, ``StandardScaler`` or ``ColumnTransformer`` objects, or dicts
  of them. Columns are taken from ``feature_names_in_`` when the lab fitted on a DataFrame, else
  from the file name (``user``/``customer`` vs ``item``/``product``) and the number of columns.
- ``item_embeddings.csv`` / ``user_embeddings.csv``: copied as they are (re-parsed and checked).

Assumptions (the lab's notebook): a tower's input is the one-hot block (encoder column order) then
the standardised numbers, and each tower ends with an L2 normalisation.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from core.errors import ArtifactError
from infra.lake import latest_run, read_run
from infra.logs import get_logger
from infra.objectstore import ObjectStore, open_store
from model_store.artifacts import (
    ArtifactBundle,
    export_bundle,
    new_version,
    read_embeddings_csv,
)
from model_store.features import (
    ITEM_SPEC,
    USER_SPEC,
    CategoricalParams,
    FeatureSpec,
    FeatureTransform,
    NumericParams,
    normalise_category,
)
from model_store.model import ModelConfig, ServingTower, linear_layers, load_state_dict, save_state_dict
from model_store.training import PopularItem, rank_popular

__all__ = ["REFUSAL", "import_lab_artifacts", "popular_from_lake"]

log = get_logger(__name__)

REFUSAL = (
    "refusing to read the lab's .pkl scalers: unpickling runs any code the file names, so a "
    "tampered file would run on this machine. If you trust where these files come from, pass "
    "--trust-pickle; they are then converted to plain JSON parameters and never unpickled again"
)

_ALIASES = {
    re.sub(r"[^a-z]", "", name.lower()): name
    for name in (*USER_SPEC.categorical, *USER_SPEC.numeric, *ITEM_SPEC.categorical, *ITEM_SPEC.numeric)
}


@dataclass
class _Fitted:
    kind: str  # "onehot" | "scaler"
    role: str | None  # "user" | "item" | None (unknown)
    columns: list[str] | None  # our column names, when known
    obj: Any
    source: str


def _canonical(name: str) -> str | None:
    return _ALIASES.get(re.sub(r"[^a-z]", "", str(name).lower()))


def _role_of(text: str) -> str | None:
    low = text.lower()
    if "user" in low or "customer" in low:
        return "user"
    if "item" in low or "product" in low:
        return "item"
    return None


def _walk(obj: Any, source: str, role: str | None) -> Iterator[_Fitted]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _walk(value, f"{source}[{key}]", _role_of(str(key)) or role)
        return
    if hasattr(obj, "transformers_"):  # ColumnTransformer
        for name, transformer, columns in obj.transformers_:
            if transformer in ("drop", "passthrough"):
                continue
            for fitted in _walk(transformer, f"{source}:{name}", role):
                if fitted.columns is None and isinstance(columns, list | tuple):
                    fitted.columns = [_canonical(c) or str(c) for c in columns]
                yield fitted
        return
    kind = "onehot" if hasattr(obj, "categories_") else "scaler" if hasattr(obj, "scale_") else None
    if kind is None:
        raise ArtifactError(f"{source}: {type(obj).__name__} is not a fitted OneHotEncoder or StandardScaler")
    names = getattr(obj, "feature_names_in_", None)
    columns = [_canonical(c) or str(c) for c in names] if names is not None else None
    yield _Fitted(kind, role, columns, obj, source)


def _assign(fitted: list[_Fitted]) -> dict[tuple[str, str], _Fitted]:
    """(role, kind) -> the fitted object, from column names, file names or column counts."""
    user_cols = {*USER_SPEC.categorical, *USER_SPEC.numeric}
    out: dict[tuple[str, str], _Fitted] = {}
    for f in fitted:
        role = f.role
        if f.columns is not None:
            role = "user" if set(f.columns) <= user_cols else "item"
        if role is None:
            width = len(f.obj.categories_) if f.kind == "onehot" else len(f.obj.scale_)
            role = "user" if (f.kind == "scaler" and width == 1) else "item" if f.kind == "scaler" else None
        if role is None:
            raise ArtifactError(f"{f.source}: cannot tell whether this encoder is the user's or the item's")
        if (role, f.kind) in out:
            raise ArtifactError(f"two {role} {f.kind} objects: {out[(role, f.kind)].source} and {f.source}")
        f.role = role
        out[(role, f.kind)] = f
    return out


def _transform(spec: FeatureSpec, onehot: _Fitted | None, scaler: _Fitted | None) -> FeatureTransform:
    cats: list[CategoricalParams] = []
    if onehot is not None:
        columns = onehot.columns or list(spec.categorical)
        if len(columns) != len(onehot.obj.categories_) or set(columns) != set(spec.categorical):
            raise ArtifactError(f"{onehot.source}: encodes {columns}, expected {list(spec.categorical)}")
        for column, values in zip(columns, onehot.obj.categories_, strict=True):
            normalised = [normalise_category(v) or "" for v in values]
            cats.append(CategoricalParams(column, tuple(normalised)))
    nums: list[NumericParams] = []
    if scaler is not None:
        columns = scaler.columns or list(spec.numeric)
        means = np.asarray(getattr(scaler.obj, "mean_", np.zeros(len(columns))), dtype=np.float64)
        scales = np.asarray(scaler.obj.scale_, dtype=np.float64)
        if len(columns) != len(scales) or set(columns) != set(spec.numeric):
            raise ArtifactError(f"{scaler.source}: scales {columns}, expected {list(spec.numeric)}")
        nums = [
            NumericParams(c, float(m), float(s) if s > 0 else 1.0)
            for c, m, s in zip(columns, means, scales, strict=True)
        ]
    return FeatureTransform(
        FeatureSpec(spec.name, tuple(c.column for c in cats), tuple(n.column for n in nums)),
        tuple(cats),
        tuple(nums),
    )


def _towers(state: dict[str, torch.Tensor], user_dim: int, item_dim: int) -> dict[str, torch.Tensor]:
    """The lab's state_dict renamed to ours (``user_tower.layers.N``, ``item_tower.layers.N``)."""
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    towers: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for prefix, keys in groups.items():
        odd = [k for k in keys if not k.endswith((".weight", ".bias"))]
        if odd:
            raise ArtifactError(f"the lab's model has layers our towers cannot reproduce: {odd[:3]}")
        layers = linear_layers(state, prefix)
        if 2 * len(layers) != len(keys) and len(layers) != len(keys):
            raise ArtifactError(f"the lab's {prefix!r} holds more than Linear layers: {sorted(keys)[:6]}")
        towers[prefix] = layers
    in_dims = {p: int(layers[0][0].shape[1]) for p, layers in towers.items()}
    by_dim = {"user": [p for p, d in in_dims.items() if d == user_dim]}
    by_dim["item"] = [p for p, d in in_dims.items() if d == item_dim]
    chosen: dict[str, str] = {}
    for role in ("user", "item"):
        candidates = by_dim[role]
        if len(candidates) > 1:
            candidates = [p for p in candidates if _role_of(p) == role] or candidates[:1]
        if not candidates:
            raise ArtifactError(
                f"no tower of the lab's model reads {user_dim if role == 'user' else item_dim} "
                f"{role} features (towers: {in_dims})"
            )
        chosen[role] = candidates[0]
    if chosen["user"] == chosen["item"]:
        raise ArtifactError("the lab's model has a single tower; two are needed")
    out: dict[str, torch.Tensor] = {}
    for role, prefix in chosen.items():
        for i, (w, b) in enumerate(towers[prefix]):
            out[f"{role}_tower.layers.{2 * i}.weight"] = w.to(torch.float32).contiguous()
            out[f"{role}_tower.layers.{2 * i}.bias"] = b.to(torch.float32).contiguous()
    return out


def _find(keys: list[str], suffix: str) -> str | None:
    hits = [k for k in keys if k.endswith(suffix)]
    return min(hits, key=len) if hits else None


def popular_from_lake(lake_uri: str, item_ids: Sequence[str]) -> tuple[list[PopularItem], str]:
    """The catalog ranked as ``recsys train`` ranks it (purchase count, then damped mean rating) from the
    ratings of the lake's latest run; returns the ranking and the run's id. Ratings of products
    outside the catalog are ignored; a lake that rates none of them is an error."""
    store = open_store(lake_uri)
    run = latest_run(store)
    table = read_run(store, run, columns=["productCode", "productRating"])
    position = {code: i for i, code in enumerate(item_ids)}
    index = np.array([position.get(c, -1) for c in table.column("productCode").to_pylist()], dtype=np.int64)
    ratings = table.column("productRating").to_numpy().astype(np.float64)
    known = index >= 0
    if not known.any():
        raise ArtifactError(
            f"the lake's run {run.run_id} rates none of the {len(item_ids)} imported items: "
            "is it the same shop?"
        )
    return rank_popular(item_ids, index[known], ratings[known]), run.run_id


def import_lab_artifacts(
    source_uri: str,
    artifacts_uri: str,
    *,
    trust_pickle: bool,
    lake_uri: str | None = None,
    now: datetime | None = None,
) -> str:
    """Convert the lab's artifacts under ``source_uri`` into a new version; returns its id.

    The lab keeps no ratings, so the version's popular items (the answer for a customer the model
    knows nothing of) come from the latest run of ``lake_uri`` when given, and are empty otherwise."""
    if not trust_pickle:
        raise ArtifactError(REFUSAL)
    source: ObjectStore = open_store(source_uri)
    keys = list(source.list())
    model_key = _find(keys, "best_model.pth") or _find(keys, ".pth") or _find(keys, ".pt")
    if model_key is None:
        raise ArtifactError(f"no model .pth file under {source.uri}")
    fitted: list[_Fitted] = []
    for key in (k for k in keys if k.endswith(".pkl")):
        try:
            obj = pickle.loads(source.get_bytes(key))  # noqa: S301 - the operator trusts these files
        except Exception as exc:  # a broken pickle fails in many ways; say which file
            raise ArtifactError(f"{key} cannot be unpickled: {type(exc).__name__}: {exc}") from exc
        fitted.extend(_walk(obj, key, _role_of(key.rsplit("/", 1)[-1])))
    parts = _assign(fitted)
    user_tf = _transform(USER_SPEC, parts.get(("user", "onehot")), parts.get(("user", "scaler")))
    item_tf = _transform(ITEM_SPEC, parts.get(("item", "onehot")), parts.get(("item", "scaler")))
    state = _towers(load_state_dict(source.get_bytes(model_key)), user_tf.dim, item_tf.dim)
    weights = save_state_dict(state)
    user_tower = ServingTower.from_state_dict(state, "user_tower")
    item_tower = ServingTower.from_state_dict(state, "item_tower")
    if user_tower.out_dim != item_tower.out_dim:
        raise ArtifactError(f"the towers' outputs differ: {user_tower.out_dim} vs {item_tower.out_dim}")

    def embeddings(name: str) -> tuple[list[str], Any]:
        key = _find(keys, name)
        if key is None:
            raise ArtifactError(f"no {name} under {source.uri}")
        ids, vectors = read_embeddings_csv(source.get_bytes(key), name)
        if vectors.size and vectors.shape[1] != user_tower.out_dim:
            raise ArtifactError(f"{name} has dimension {vectors.shape[1]}, the model {user_tower.out_dim}")
        return ids, vectors

    item_ids, item_vectors = embeddings("item_embeddings.csv")
    user_keys, user_vectors = embeddings("user_embeddings.csv")
    try:
        user_ids = [int(float(u)) for u in user_keys]
    except ValueError as exc:
        raise ArtifactError(f"user_embeddings.csv: ids must be customer numbers: {exc}") from exc
    popular: list[PopularItem] = []
    training: dict[str, Any] = {"imported_from": source.uri, "model_file": model_key}
    if lake_uri is not None:
        popular, lake_run = popular_from_lake(lake_uri, item_ids)
        training["popular_from_lake_run"] = lake_run
    when = (now or datetime.now(UTC)).astimezone(UTC)
    hidden, item_hidden = user_tower.hidden, item_tower.hidden
    bundle = ArtifactBundle(
        version=new_version(weights, when),
        config=ModelConfig(user_tf.dim, item_tf.dim, hidden, user_tower.out_dim, item_hidden),
        weights=weights,
        user_transform=user_tf,
        item_transform=item_tf,
        item_ids=item_ids,
        item_vectors=item_vectors,
        user_ids=user_ids,
        user_vectors=user_vectors,
        popular=popular,
        metrics={},
        training=training,
        created_at=when.isoformat(timespec="milliseconds"),
        source="recsys import-lab-artifacts",
    )
    version = export_bundle(open_store(artifacts_uri), bundle)
    log.info("imported the lab's artifacts from %s as version %s", source.uri, version)
    return version
