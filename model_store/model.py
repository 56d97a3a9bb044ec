"""The two-tower model: a user tower and an item tower, each an MLP ending in an L2-normalised
embedding; the predicted (scaled) rating is their dot product, in [-1, 1] like the label.

Training uses the torch modules (:class:`TwoTower`): :class:`Tower` is the one definition of a tower.
Offline (export, ``recsys load-vectors``, the lab import) the trained :class:`Tower`, rebuilt from the
state_dict, runs through :class:`ServingTower` (eval mode, inference mode, one forward per batch,
float64 so that a row's embedding does not depend on its batch). The serving processes (consumer,
API) never import torch: they run the user tower's NumPy copy, ``model_store.serving.NumpyTower``,
from the arrays :func:`numpy_tower` takes out of the trained tower (a test proves the two agree).
"""

from __future__ import annotations

import copy
import io
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from core.errors import ArtifactError
from model_store.serving import NumpyTower

__all__ = [
    "KINDS",
    "ModelConfig",
    "ServingTower",
    "Tower",
    "TwoTower",
    "linear_layers",
    "load_state_dict",
    "numpy_tower",
    "save_state_dict",
]


KINDS = ("features", "hybrid")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape of both towers (plain data, stored in the manifest).

    ``kind``: ``features`` (towers over the features only: the lab's models) or ``hybrid`` (each tower
    adds an ID embedding, and a learned "unknown" vector when the ID is not known, to its feature
    MLP's output; see :class:`Tower`)."""

    user_dim: int
    item_dim: int
    hidden: tuple[int, ...] = (64,)
    embedding_dim: int = 32
    item_hidden: tuple[int, ...] | None = None  # when the item tower differs (imported models)
    kind: str = "features"

    @property
    def item_layers(self) -> tuple[int, ...]:
        return self.hidden if self.item_hidden is None else self.item_hidden

    @property
    def hybrid(self) -> bool:
        return self.kind == "hybrid"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "user_dim": self.user_dim,
            "item_dim": self.item_dim,
            "hidden": list(self.hidden),
            "embedding_dim": self.embedding_dim,
        }
        if self.item_hidden is not None and self.item_hidden != self.hidden:
            out["item_hidden"] = list(self.item_hidden)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelConfig:
        try:
            config = cls(
                int(data["user_dim"]),
                int(data["item_dim"]),
                tuple(int(h) for h in data["hidden"]),
                int(data["embedding_dim"]),
                tuple(int(h) for h in data["item_hidden"]) if data.get("item_hidden") is not None else None,
                str(data.get("kind", "features")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"model configuration is malformed: {exc!r}") from exc
        if config.kind not in KINDS:
            raise ArtifactError(f"model kind {config.kind!r} is not one of {KINDS}")
        return config


class Tower(nn.Module):
    """Linear -> ReLU (per hidden size) -> Linear [+ ID part] -> L2 normalisation.

    A hybrid tower (``hybrid=True``) adds, before the normalisation, the row of its ID embedding
    (``ids``, ``n_ids`` rows) for a known ID, and the learned ``unknown`` vector otherwise: a new
    customer or product gets its vector from its features and ``unknown``. Training replaces a
    random share of the IDs by ``unknown`` (feature dropout), so that this cold-start path is
    trained on every batch, not only for the IDs that are missing."""

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], out_dim: int, *, hybrid: bool = False, n_ids: int = 0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)
        self.hybrid = hybrid
        self.unknown: nn.Parameter | None = nn.Parameter(torch.zeros(out_dim)) if hybrid else None
        self.ids: nn.Embedding | None = None
        if hybrid and n_ids > 0:
            self.ids = nn.Embedding(n_ids, out_dim)
            nn.init.normal_(self.ids.weight, 0.0, 0.1)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str) -> Tower:
        """The tower stored under ``prefix`` (``layers.N`` weights, and ``unknown`` / ``ids.weight``
        when hybrid), its shape read from the weights."""
        found = linear_layers(state, f"{prefix}.layers")
        ids = state.get(f"{prefix}.ids.weight")
        tower = cls(
            int(found[0][0].shape[1]),
            tuple(int(w.shape[0]) for w, _ in found[:-1]),
            int(found[-1][0].shape[0]),
            hybrid=f"{prefix}.unknown" in state,
            n_ids=0 if ids is None else int(ids.shape[0]),
        )
        mine = {f"{prefix}.{k}": v for k, v in tower.state_dict().items()}
        missing = sorted(set(mine) - set(state))
        if missing:
            raise ArtifactError(
                f"the tower under {prefix!r} is not Linear/ReLU layers: {missing[:3]} are missing"
            )
        for key, value in mine.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ArtifactError(
                    f"{key} has the shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
                )
        tower.load_state_dict({k[len(prefix) + 1 :]: state[k].detach().to(v.dtype) for k, v in mine.items()})
        return tower

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of feature rows ``x``; ``ids`` (hybrid towers) holds each row's ID index, -1
        for an unknown ID (then ``unknown`` stands in). Without ``ids`` every row is unknown."""
        h = self.layers(x)
        if self.unknown is not None:
            part = self.unknown.expand_as(h)
            if ids is not None and self.ids is not None:
                known = ids >= 0
                part = torch.where(known[:, None], self.ids(ids.clamp(min=0)), part)
            h = h + part
        out: torch.Tensor = functional.normalize(h, dim=-1)
        return out


class TwoTower(nn.Module):
    """The training module: both towers, and (hybrid) a rating head, ``rating_head(dot)`` -> the
    scaled rating, trained as an auxiliary task beside the retrieval loss."""

    def __init__(self, config: ModelConfig, n_users: int = 0, n_items: int = 0) -> None:
        super().__init__()
        self.config = config
        self.user_tower = Tower(
            config.user_dim, config.hidden, config.embedding_dim, hybrid=config.hybrid, n_ids=n_users
        )
        self.item_tower = Tower(
            config.item_dim, config.item_layers, config.embedding_dim, hybrid=config.hybrid, n_ids=n_items
        )
        self.rating_head = nn.Linear(1, 1)
        with torch.no_grad():
            self.rating_head.weight.fill_(1.0)
            self.rating_head.bias.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user: torch.Tensor = self.user_tower(users)
        item: torch.Tensor = self.item_tower(items)
        return (user * item).sum(dim=-1)


def save_state_dict(state: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def load_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """A state_dict from bytes, with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a variety of types for corrupt or unsafe files
        raise ArtifactError(f"model weights cannot be read safely: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError("model weights are not a state_dict of tensors")
    return {str(k): v for k, v in state.items()}


_INDEX = re.compile(r"(\d+)")


def _layer_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _INDEX.findall(name))


def linear_layers(state: Mapping[str, torch.Tensor], prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) of every Linear layer under ``prefix`` (e.g. ``user_tower``), in index
    order, checked to chain; a missing bias is zeros."""
    names = sorted((k for k in state if k.startswith(prefix + ".") and k.endswith(".weight")), key=_layer_key)
    if not names:
        raise ArtifactError(f"the state_dict has no layers under {prefix!r}")
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name in names:
        w = state[name].detach()
        b_name = name[: -len("weight")] + "bias"
        b = state[b_name].detach() if b_name in state else torch.zeros(w.shape[0], dtype=w.dtype)
        if w.ndim != 2 or tuple(b.shape) != (w.shape[0],):
            raise ArtifactError(f"layer {name} has an unexpected shape {tuple(w.shape)}")
        layers.append((w, b))
    for (prev, _), (nxt, _) in itertools.pairwise(layers):
        if nxt.shape[1] != prev.shape[0]:
            raise ArtifactError(
                f"layers under {prefix!r} do not chain: {tuple(prev.shape)} -> {tuple(nxt.shape)}"
            )
    return layers


class ServingTower:
    """The trained torch tower, run for embeddings outside training (the exported vectors, the lab
    import, and the reference of the serving copy's drift test): in eval mode, under
    ``torch.inference_mode``, one forward per batch of feature rows; with IDs for the item tower.

    It computes in float64 and rounds the embeddings to float32, so a row's result practically never
    depends on the other rows of its batch (a float32 matrix product may sum in another order for
    another batch size; in float64 such a difference survives the rounding only very rarely). The
    serving processes run ``model_store.serving.NumpyTower`` instead, row-independent by
    construction. Threads: whatever ``torch.set_num_threads`` the process set.
    """

    def __init__(self, tower: Tower) -> None:
        self._tower = copy.deepcopy(tower).to(torch.float64).eval()
        linear = [m for m in self._tower.modules() if isinstance(m, nn.Linear)]
        self.in_dim = int(linear[0].in_features)
        self.out_dim = int(linear[-1].out_features)
        self.hidden = tuple(int(m.out_features) for m in linear[:-1])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str) -> ServingTower:
        """The tower stored under ``prefix`` (``user_tower``/``item_tower``), its shape read from the
        weights themselves."""
        return cls(Tower.from_state_dict(state, prefix))

    @property
    def hybrid(self) -> bool:
        return self._tower.hybrid

    def embed(
        self, rows: npt.NDArray[np.floating[Any]], ids: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """L2-normalised float32 embeddings of dense feature rows (n, in_dim); a hybrid tower with
        its ID table (the item tower) takes each row's ID index in ``ids`` (-1: unknown)."""
        if rows.ndim != 2 or rows.shape[1] != self.in_dim:
            raise ValueError(f"the tower reads (n, {self.in_dim}) rows, got {rows.shape}")
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
        with torch.inference_mode():
            out = self._tower(x, None if ids is None else torch.from_numpy(np.asarray(ids, dtype=np.int64)))
        result: npt.NDArray[np.float32] = out.numpy().astype(np.float32)
        return result


def numpy_tower(state: Mapping[str, torch.Tensor], prefix: str) -> NumpyTower:
    """The serving copy of the tower stored under ``prefix`` (``user_tower``): its Linear layers
    and, hybrid, its ``unknown`` vector as arrays (the trained values, held in float64), checked by
    building the torch :class:`Tower` first. The ID table is left out: serving calls the tower
    without IDs."""
    tower = Tower.from_state_dict(state, prefix)
    layers = [
        (m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy())
        for m in tower.layers
        if isinstance(m, nn.Linear)
    ]
    unknown = None if tower.unknown is None else tower.unknown.detach().cpu().numpy().copy()
    return NumpyTower(layers, unknown)
