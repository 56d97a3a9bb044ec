"""Training's tunables (``RECSYS_TRAIN__*``): handed to the trainer by the wiring place."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["TrainSettings"]


class TrainSettings(BaseModel):
    epochs: int = Field(200, ge=1, le=1000, description="at most; early stopping usually ends sooner")
    batch_size: int = Field(
        256, ge=16, le=65_536, description="pairs per step: the in-batch softmax's negatives"
    )
    learning_rate: float = Field(1e-2, gt=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0, lt=1, description="Adam L2 penalty")
    patience: int = Field(10, ge=1, le=100, description="epochs without improvement before stopping")
    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden layer widths of each tower")
    embedding_dim: int = Field(32, ge=2, le=2000, description="must match the vector(32) tables")
    temperature: float = Field(0.3, gt=0, le=10, description="softmax temperature of the retrieval loss")
    feature_dropout: float = Field(
        0.2, ge=0, lt=1, description="share of IDs replaced by the 'unknown' row in training (cold start)"
    )
    rating_weight: float = Field(0.1, ge=0, le=10, description="weight of the auxiliary rating head's MSE")
    val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="each customer's pairs held out for early stopping"
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="each customer's pairs held out for the metrics"
    )
    cold_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="customers held out whole (cold-start metrics)"
    )
    cold_prior: bool = Field(
        False,
        description="a popularity prior in new customers' vectors, its weight chosen on customers held "
        "out whole (measured: no better than popularity on the real shop, docs/model.md; off)",
    )
    cold_val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="with cold_prior: customers held out whole to choose its weight"
    )
    refit: bool = Field(True, description="export a model fitted on every pair (else the evaluated one)")
    seed: int = 7
    torch_threads: int = Field(1, ge=1, le=64)
