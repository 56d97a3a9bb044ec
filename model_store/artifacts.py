"""Versioned model artifacts in the lab's ml-artifacts layout, verified on every load.

Layout under the artifacts URI (``s3://bucket/prefix`` or a local folder)::

    <version>/model/best_model.pth              state_dict (torch.save; read with weights_only=True)
    <version>/scalers/user_features.json        fitted one-hot categories + standardisation (plain JSON)
    <version>/scalers/item_features.json        (hybrid: also ``ids``, the item ID embedding's rows)
    <version>/embeddings/item_embeddings.csv    header ``id,embedding``, pgvector text ``[0.1,...]``
    <version>/embeddings/user_embeddings.csv    header ``id,embedding`` (exactly the lab's two columns)
    <version>/embeddings/user_bought.csv        hybrid only: header ``id,bought``, each customer's training
                                                items as a JSON list (the already-bought filter)
    <version>/stats/popular_items.csv           ``id,score,count``: the fallback, most popular first
    <version>/manifest.json                     version, feature spec, dimension, metrics, sha256 of
                                                every file above; written LAST
    latest                                      the newest complete version id (text)

``user_bought.csv`` is optional (a lab-made version has none). A version written before it existed
kept the lists in a third ``bought`` column of ``user_embeddings.csv``; such a version still loads.

A version exists once its manifest does (the manifest is written after every file it lists), so a
crashed export is invisible. Version ids sort by creation time: ``20261126T061502123Z-1a2b3c4d``
(UTC, milliseconds, then the first 8 hex digits of the weights' sha256).

The manifest's ``kind`` says which model a version holds: ``hybrid`` (``recsys train``: ID embeddings
plus features; the customers' ID embeddings are not in the weights, a known customer's vector is
their row of ``user_embeddings.csv``; ``recsys forget`` removes it there and in ``user_bought.csv``)
or ``features`` (the lab's models, ``recsys import-lab-artifacts``: towers over the features only).

Loading checks the sha256 of every listed file and refuses a mismatch (:class:`ArtifactError`).
Nothing here unpickles: the weights go through ``torch.load(weights_only=True)`` and the scalers are
JSON. (The manifest itself is not signed: whoever can rewrite the manifest can rewrite the files.)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import ArtifactError, NotFoundError
from infra.logs import get_logger
from infra.objectstore import ObjectStore, open_store
from model_store.features import ITEM_SPEC, USER_SPEC, FeatureTransform
from model_store.model import ModelConfig, ServingTower, load_state_dict, numpy_tower
from model_store.serving import tower_to_npz
from model_store.training import PopularItem, TrainedModel

__all__ = [
    "FILES",
    "LATEST",
    "MANIFEST",
    "OPTIONAL_FILES",
    "ArtifactBundle",
    "export_bundle",
    "export_trained",
    "format_vector",
    "load_bundle",
    "new_version",
    "parse_vector",
    "read_bought_csv",
    "read_embeddings_csv",
    "read_user_bought",
    "resolve_version",
]

log = get_logger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
LATEST = "latest"
FILES = {
    "model": "model/best_model.pth",
    "user_features": "scalers/user_features.json",
    "item_features": "scalers/item_features.json",
    "item_embeddings": "embeddings/item_embeddings.csv",
    "user_embeddings": "embeddings/user_embeddings.csv",
    "user_bought": "embeddings/user_bought.csv",
    "popular_items": "stats/popular_items.csv",
}
OPTIONAL_FILES = frozenset({FILES["user_bought"]})  # a version may lack these (lab-made, older releases)
_VERSION = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")


def new_version(weights: bytes, now: datetime | None = None) -> str:
    when = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
    return f"{stamp}-{hashlib.sha256(weights).hexdigest()[:8]}"


@dataclass
class ArtifactBundle:
    """Everything one version holds, in memory."""

    version: str
    config: ModelConfig
    weights: bytes  # the state_dict file as exported
    user_transform: FeatureTransform
    item_transform: FeatureTransform
    item_ids: list[str]
    item_vectors: npt.NDArray[np.float32]
    user_ids: list[int]
    user_vectors: npt.NDArray[np.float32]
    popular: list[PopularItem]
    user_bought: list[list[str]] | None = None  # hybrid: each user's training items (the filter)
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    source: str = "recsys train"
    stored_manifest: dict[str, Any] = field(default_factory=dict)  # as read by load_bundle

    def towers(self) -> tuple[ServingTower, ServingTower]:
        state = load_state_dict(self.weights)
        return ServingTower.from_state_dict(state, "user_tower"), ServingTower.from_state_dict(
            state, "item_tower"
        )

    def user_tower_arrays(self) -> bytes:
        """The user tower's serving copy as an ``.npz`` (``model_store.serving``): what
        ``recsys load-vectors`` stores in ``model_versions.user_tower`` for the serving processes."""
        return tower_to_npz(numpy_tower(load_state_dict(self.weights), "user_tower"))

    def manifest(self, files: Mapping[str, bytes]) -> dict[str, Any]:
        label = (
            "implicit: every rated (customer, product) pair is a positive; score = dot(user, item); "
            "rating: an auxiliary head maps the dot product to (rating - 3) / 2"
            if self.config.hybrid
            else "(rating - 3) / 2, in [-1, 1]; predicted = dot(user, item)"
        )
        return {
            "format": FORMAT,
            "version": self.version,
            "kind": self.config.kind,
            "created_at": self.created_at,
            "source": self.source,
            "embedding_dim": self.config.embedding_dim,
            "model": self.config.to_json(),
            "features": {
                "user": {"categorical": list(USER_SPEC.categorical), "numeric": list(USER_SPEC.numeric)},
                "item": {"categorical": list(ITEM_SPEC.categorical), "numeric": list(ITEM_SPEC.numeric)},
                "categorical": "lower-cased and stripped, one-hot; unknown or missing -> all zeros",
                "numeric": "standardised (x - mean) / std; missing -> the mean (0)",
                "fitted_with": "scikit-learn ColumnTransformer(OneHotEncoder(handle_unknown='ignore'), "
                "StandardScaler), stored as its fitted parameters",
                "label": label,
            },
            "counts": {"items": len(self.item_ids), "users": len(self.user_ids)},
            "metrics": self.metrics,
            "training": self.training,
            "files": {
                key: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for key, data in sorted(files.items())
            },
        }


# --- embeddings CSV (the lab's format) ------------------------------------------------------------
def format_vector(vector: npt.NDArray[np.float32]) -> str:
    """pgvector text form with the shortest digits that read back to the same float32."""
    return "[" + ",".join(vector.astype(np.float32).astype(str).tolist()) + "]"


def parse_vector(text: str) -> npt.NDArray[np.float32]:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"not a vector: {body[:40]!r}")
    return np.array([float(v) for v in body[1:-1].split(",")], dtype=np.float32)


def _embeddings_csv(ids: list[Any], vectors: npt.NDArray[np.float32]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "embedding"])
    for ident, vec in zip(ids, vectors, strict=True):
        writer.writerow([ident, format_vector(vec)])
    return out.getvalue().encode()


def _bought_csv(ids: list[int], bought: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "bought"])
    for ident, items in zip(ids, bought, strict=True):
        writer.writerow([ident, json.dumps(items, separators=(",", ":"))])
    return out.getvalue().encode()


def _bought_list(text: str, name: str, line: int) -> list[str]:
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{name}: line {line} has no JSON list of bought items: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ArtifactError(f"{name}: line {line}: bought must be a JSON list of product codes")
    return items


def read_bought_csv(data: bytes, name: str) -> list[list[str]] | None:
    """The ``bought`` column of a user embeddings CSV written by an older release (``id,embedding,
    bought``; one list per row), or None when the file has the lab's two columns only."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header is None or len(header) < 3 or header[2].strip() != "bought":
        return None
    out: list[list[str]] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) < 3:
            raise ArtifactError(f"{name}: line {line} has no JSON list of bought items")
        out.append(_bought_list(row[2], name, line))
    return out


def read_user_bought(data: bytes, name: str, user_ids: list[int]) -> list[list[str]]:
    """``user_bought.csv`` (``id,bought``) as one list per ``user_ids`` entry, in that order. A
    customer without a row has bought nothing the version knows of; a row of a customer the
    embeddings do not have (forgotten from one file and not yet from the other) is ignored."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["id", "bought"]:
        raise ArtifactError(f"{name}: the header must be 'id,bought', got {header!r}")
    by_id: dict[int, list[str]] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) < 2:
            raise ArtifactError(f"{name}: line {line} is not 'id,[product codes]'")
        try:
            ident = int(row[0].strip())
        except ValueError as exc:
            raise ArtifactError(f"{name}: line {line}: the id must be a customer number: {exc}") from exc
        if ident in by_id:
            raise ArtifactError(f"{name}: customer {ident} appears twice")
        by_id[ident] = _bought_list(row[1], name, line)
    return [by_id.get(u, []) for u in user_ids]


def read_embeddings_csv(data: bytes, name: str) -> tuple[list[str], npt.NDArray[np.float32]]:
    """(ids, vectors) from an ``id,embedding`` CSV; every vector must have the same dimension."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["id", "embedding"]:
        raise ArtifactError(f"{name}: the header must be 'id,embedding', got {header!r}")
    ids: list[str] = []
    vectors: list[npt.NDArray[np.float32]] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            ids.append(row[0].strip())
            vectors.append(parse_vector(row[1]))
        except (IndexError, ValueError) as exc:
            raise ArtifactError(f"{name}: line {line} is not 'id,[floats]': {exc}") from exc
    if not vectors:
        return ids, np.zeros((0, 0), dtype=np.float32)
    dims = {v.shape[0] for v in vectors}
    if len(dims) != 1:
        raise ArtifactError(f"{name}: vectors of different dimensions {sorted(dims)}")
    matrix = np.vstack(vectors)
    if not np.isfinite(matrix).all():
        raise ArtifactError(f"{name}: non-finite values in the embeddings")
    return ids, matrix


def _popular_csv(items: list[PopularItem]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "score", "count"])
    for item in items:
        writer.writerow([item.id, repr(item.score), item.count])
    return out.getvalue().encode()


def _read_popular(data: bytes) -> list[PopularItem]:
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    try:
        return [PopularItem(r["id"], float(r["score"]), int(r["count"])) for r in rows]
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"popular items are malformed: {exc!r}") from exc


# --- export -----------------------------------------------------------------------------------------
def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def export_bundle(store: ObjectStore, bundle: ArtifactBundle) -> str:
    """Write every file of the version, then its manifest, then the ``latest`` pointer."""
    if store.exists(f"{bundle.version}/{MANIFEST}"):
        raise ArtifactError(f"version {bundle.version} already exists under {store.uri}")
    item_features = bundle.item_transform.to_json()
    if bundle.config.hybrid:
        item_features["ids"] = list(bundle.item_ids)  # row i of item_tower.ids is ids[i]
    files = {
        FILES["model"]: bundle.weights,
        FILES["user_features"]: _json(bundle.user_transform.to_json()),
        FILES["item_features"]: _json(item_features),
        FILES["item_embeddings"]: _embeddings_csv(bundle.item_ids, bundle.item_vectors),
        FILES["user_embeddings"]: _embeddings_csv(bundle.user_ids, bundle.user_vectors),
        FILES["popular_items"]: _popular_csv(bundle.popular),
    }
    if bundle.user_bought is not None:
        files[FILES["user_bought"]] = _bought_csv(bundle.user_ids, bundle.user_bought)
    for key, data in files.items():
        store.put_bytes(f"{bundle.version}/{key}", data)
    store.put_bytes(f"{bundle.version}/{MANIFEST}", _json(bundle.manifest(files)))
    current = _read_latest(store)
    if current is None or current <= bundle.version:
        store.put_bytes(LATEST, (bundle.version + "\n").encode())
    log.info("exported artifact version %s to %s", bundle.version, store.uri)
    return bundle.version


def export_trained(artifacts_uri: str, trained: TrainedModel, now: datetime | None = None) -> str:
    from model_store.model import save_state_dict

    weights = save_state_dict(trained.export_state_dict())
    when = (now or datetime.now(UTC)).astimezone(UTC)
    bundle = ArtifactBundle(
        version=new_version(weights, when),
        config=trained.config,
        weights=weights,
        user_transform=trained.user_transform,
        item_transform=trained.item_transform,
        item_ids=list(trained.data.item_ids),
        item_vectors=trained.item_embeddings(),
        user_ids=list(trained.data.user_ids),
        user_vectors=trained.user_embeddings(),
        popular=trained.popular,
        user_bought=trained.data.bought() if trained.config.hybrid else None,
        metrics=trained.metrics,
        training={**trained.training, "history": trained.history},
        created_at=when.isoformat(timespec="milliseconds"),
    )
    return export_bundle(open_store(artifacts_uri), bundle)


# --- load -------------------------------------------------------------------------------------------
def _read_latest(store: ObjectStore) -> str | None:
    if not store.exists(LATEST):
        return None
    return store.get_bytes(LATEST).decode().strip() or None


def resolve_version(store: ObjectStore, version: str | None) -> str:
    """``version`` checked for shape, or the ``latest`` pointer's."""
    if version is None:
        latest = _read_latest(store)
        if latest is None:
            raise NotFoundError(f"no artifact version under {store.uri}; run `recsys train` first")
        version = latest
    if not _VERSION.match(version):
        raise NotFoundError(f"{version!r} is not an artifact version id (like 20261126T061502123Z-1a2b3c4d)")
    return version


def load_bundle(store: ObjectStore, version: str | None = None) -> ArtifactBundle:
    """Load and verify a version (``None`` = latest). Raises ``ArtifactError`` on any mismatch."""
    version = resolve_version(store, version)
    try:
        manifest = json.loads(store.get_bytes(f"{version}/{MANIFEST}"))
    except NotFoundError:
        raise NotFoundError(f"artifact version {version} does not exist under {store.uri}") from None
    except ValueError as exc:
        raise ArtifactError(f"{version}/{MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        raise ArtifactError(f"{version}/{MANIFEST} does not describe version {version}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or set(FILES.values()) - OPTIONAL_FILES - set(listed):
        raise ArtifactError(f"{version}/{MANIFEST} does not list every required file")
    data: dict[str, bytes] = {}
    for key, meta in listed.items():
        try:
            blob = store.get_bytes(f"{version}/{key}")
        except NotFoundError:
            raise ArtifactError(f"{version}/{key} is listed in the manifest but missing") from None
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta.get("sha256"):
            raise ArtifactError(
                f"{version}/{key} fails verification: sha256 {digest[:12]}... does not match the "
                f"manifest's {str(meta.get('sha256'))[:12]}...; the file changed after export, refusing it"
            )
        data[key] = blob
    try:
        user_tf = FeatureTransform.from_json(json.loads(data[FILES["user_features"]]))
        item_tf = FeatureTransform.from_json(json.loads(data[FILES["item_features"]]))
    except ValueError as exc:
        raise ArtifactError(f"{version}: feature parameters are not valid JSON: {exc}") from exc
    config = ModelConfig.from_json(manifest.get("model", {}))
    item_ids, item_vectors = read_embeddings_csv(data[FILES["item_embeddings"]], "item_embeddings.csv")
    user_keys, user_vectors = read_embeddings_csv(data[FILES["user_embeddings"]], "user_embeddings.csv")
    try:
        user_ids = [int(u) for u in user_keys]
    except ValueError as exc:
        raise ArtifactError(f"user_embeddings.csv: user ids must be integers: {exc}") from exc
    bought: list[list[str]] | None
    if FILES["user_bought"] in data:
        bought = read_user_bought(data[FILES["user_bought"]], "user_bought.csv", user_ids)
    else:  # an older release kept the lists in a third column of user_embeddings.csv
        bought = read_bought_csv(data[FILES["user_embeddings"]], "user_embeddings.csv")
        if bought is not None and len(bought) != len(user_ids):
            raise ArtifactError("user_embeddings.csv: the bought column does not cover every row")
    for name, matrix in (("item", item_vectors), ("user", user_vectors)):
        if matrix.size and matrix.shape[1] != config.embedding_dim:
            raise ArtifactError(
                f"{name} embeddings have dimension {matrix.shape[1]}, "
                f"the manifest says {config.embedding_dim}"
            )
    bundle = ArtifactBundle(
        version=version,
        config=config,
        weights=data[FILES["model"]],
        user_transform=user_tf,
        item_transform=item_tf,
        item_ids=item_ids,
        item_vectors=item_vectors,
        user_ids=user_ids,
        user_vectors=user_vectors,
        popular=_read_popular(data[FILES["popular_items"]]),
        user_bought=bought,
        metrics=dict(manifest.get("metrics") or {}),
        training=dict(manifest.get("training") or {}),
        created_at=str(manifest.get("created_at", "")),
        source=str(manifest.get("source", "")),
        stored_manifest=manifest,
    )
    user_tower, item_tower = bundle.towers()  # the weights must fit the feature parameters
    if user_tower.in_dim != user_tf.dim or item_tower.in_dim != item_tf.dim:
        raise ArtifactError(
            f"{version}: the towers read {user_tower.in_dim}/{item_tower.in_dim} inputs but the feature "
            f"parameters produce {user_tf.dim}/{item_tf.dim}"
        )
    return bundle
