"""The two-tower model: a user tower and an item tower, each an MLP ending in an L2-normalised
embedding; the predicted (scaled) rating is their dot product, in [-1, 1] like the label.

Training uses the torch module (:class:`TwoTower`). Serving uses :class:`NumpyTower`, built from the
same state_dict: its first layer is a gather over the one-hot positions (the input is mostly zeros)
and every row is computed independently of the others, so a user's embedding is the same whether it
is computed alone or in a batch of 500 -- which is what makes the batch path give exactly the
one-by-one path's answer. It is also ~10x cheaper than a dense forward over a wide one-hot input.
"""

from __future__ import annotations

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
from model_store.features import SparseRows

__all__ = [
    "ModelConfig",
    "NumpyTower",
    "Tower",
    "TwoTower",
    "load_state_dict",
    "save_state_dict",
]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape of both towers (plain data, stored in the manifest)."""

    user_dim: int
    item_dim: int
    hidden: tuple[int, ...] = (64,)
    embedding_dim: int = 32
    item_hidden: tuple[int, ...] | None = None  # when the item tower differs (imported models)

    @property
    def item_layers(self) -> tuple[int, ...]:
        return self.hidden if self.item_hidden is None else self.item_hidden

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
            return cls(
                int(data["user_dim"]),
                int(data["item_dim"]),
                tuple(int(h) for h in data["hidden"]),
                int(data["embedding_dim"]),
                tuple(int(h) for h in data["item_hidden"]) if data.get("item_hidden") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"model configuration is malformed: {exc!r}") from exc


class Tower(nn.Module):
    """Linear -> ReLU (per hidden size) -> Linear -> L2 normalisation."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional.normalize(self.layers(x), dim=-1)
        return out


class TwoTower(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user_tower = Tower(config.user_dim, config.hidden, config.embedding_dim)
        self.item_tower = Tower(config.item_dim, config.item_layers, config.embedding_dim)

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


@dataclass(frozen=True, slots=True)
class NumpyTower:
    """A tower's layers as float64 arrays; ``embed`` is row-independent (see the module docstring)."""

    weights: tuple[npt.NDArray[np.float64], ...]  # each (out, in)
    biases: tuple[npt.NDArray[np.float64], ...]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str) -> NumpyTower:
        """The Linear layers under ``prefix`` (e.g. ``user_tower``), in index order."""
        names = sorted(
            (k for k in state if k.startswith(prefix + ".") and k.endswith(".weight")), key=_layer_key
        )
        if not names:
            raise ArtifactError(f"the state_dict has no layers under {prefix!r}")
        weights, biases = [], []
        for name in names:
            w = state[name].detach().to(torch.float64).numpy()
            b_name = name[: -len("weight")] + "bias"
            b = (
                state[b_name].detach().to(torch.float64).numpy()
                if b_name in state
                else np.zeros(w.shape[0], dtype=np.float64)
            )
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ArtifactError(f"layer {name} has an unexpected shape {tuple(w.shape)}")
            weights.append(w)
            biases.append(b)
        for prev, nxt in itertools.pairwise(weights):
            if nxt.shape[1] != prev.shape[0]:
                raise ArtifactError(f"layers under {prefix!r} do not chain: {prev.shape} -> {nxt.shape}")
        return cls(tuple(weights), tuple(biases))

    @property
    def in_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.weights[-1].shape[0])

    def embed(self, rows: SparseRows, numeric_offset: int) -> npt.NDArray[np.float32]:
        """L2-normalised float32 embeddings of encoded rows."""
        n = rows.indices.shape[0]
        first_t = self.weights[0].T  # (in, hidden): row j is the contribution of input j
        h = np.tile(self.biases[0], (n, 1))
        for j in range(rows.indices.shape[1]):
            col = rows.indices[:, j]
            hit = col >= 0
            h[hit] += first_t[col[hit]]
        for j in range(rows.numeric.shape[1]):
            h += rows.numeric[:, j : j + 1] * first_t[numeric_offset + j]
        for w, b in zip(self.weights[1:], self.biases[1:], strict=True):
            np.maximum(h, 0.0, out=h)
            h = h @ w.T + b
        norm = np.sqrt((h * h).sum(axis=1, keepdims=True))
        out: npt.NDArray[np.float32] = (h / np.maximum(norm, 1e-12)).astype(np.float32)
        return out
