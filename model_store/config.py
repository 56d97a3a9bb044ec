"""Training's tunables (``RECSYS_TRAIN__*``): handed to the trainer by the wiring place."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["TrainSettings"]


class TrainSettings(BaseModel):
    epochs: int = Field(60, ge=1, le=1000)
    batch_size: int = Field(256, ge=16, le=65_536)
    learning_rate: float = Field(3e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0, lt=1, description="Adam L2 penalty")
    patience: int = Field(6, ge=1, le=100, description="epochs without improvement before stopping")
    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden layer widths of each tower")
    embedding_dim: int = Field(32, ge=2, le=2000, description="must match the vector(32) tables")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratings held out for early stopping")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="ratings held out for the metrics")
    seed: int = 7
    torch_threads: int = Field(1, ge=1, le=64)
