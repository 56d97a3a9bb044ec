"""Training and evaluation of the two-tower model.

``fit(table, cfg)`` is the pure part (a training table in, a :class:`TrainedModel` out);
``train(lake_uri, artifacts_uri, cfg)`` reads the latest complete lake run, fits, and exports a new
artifact version. The ratings are split once, seeded: ``train`` (fits the weights and the feature
parameters), ``validation`` (early stopping) and ``test`` (the metrics in the manifest, never seen
by the fit). Reproducible on CPU: seeded shuffles and initialisation, deterministic algorithms, a
fixed number of torch threads.

Metrics (all on the test split):

- ``rmse`` of the predicted rating (1-5) against ``rmse_mean_baseline`` (always predict the
  training mean);
- ``ndcg_at_10``, ``hit_rate_at_10`` and ``catalog_coverage_at_10``: for every user with a
  relevant test rating (>= 4), all items the user did not rate in train/validation are ranked; a
  relevant test item in the top 10 is a hit. The ``popular_*`` figures rank the same candidates by
  popularity (damped mean rating of the training split) instead of the model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch

from core.errors import UserError
from infra.logs import get_logger
from model_store.config import TrainSettings
from model_store.features import ITEM_SPEC, USER_SPEC, FeatureTransform
from model_store.model import ModelConfig, ServingTower, TwoTower

__all__ = [
    "PopularItem",
    "TrainSummary",
    "TrainedModel",
    "TrainingData",
    "fit",
    "popularity",
    "prepare",
    "rank_popular",
    "train",
]

log = get_logger(__name__)

RELEVANT = 4.0  # a rating >= this is a relevant item for the ranking metrics
TOP_K = 10
PRIOR_WEIGHT = 5.0  # popularity: the mean rating shrunk toward the global mean by 5 pseudo-ratings


@dataclass(frozen=True, slots=True)
class TrainingData:
    """The training table as indices: one row of features per user and per item."""

    user_ids: list[int]
    user_columns: dict[str, list[Any]]  # USER_SPEC columns, one entry per user
    item_ids: list[str]
    item_columns: dict[str, list[Any]]  # ITEM_SPEC columns, one entry per item
    user_index: npt.NDArray[np.int64]  # per rating
    item_index: npt.NDArray[np.int64]
    rating: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PopularItem:
    id: str
    score: float  # damped mean rating (1-5)
    count: int


@dataclass
class TrainedModel:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    user_transform: FeatureTransform
    item_transform: FeatureTransform
    data: TrainingData
    metrics: dict[str, float]
    history: list[dict[str, float]]
    popular: list[PopularItem]
    training: dict[str, Any] = field(default_factory=dict)

    def user_embeddings(self) -> npt.NDArray[np.float32]:
        tower = ServingTower.from_state_dict(self.state_dict, "user_tower")
        return tower.embed(self.user_transform.dense(self.data.user_columns))

    def item_embeddings(self) -> npt.NDArray[np.float32]:
        tower = ServingTower.from_state_dict(self.state_dict, "item_tower")
        return tower.embed(self.item_transform.dense(self.data.item_columns))


@dataclass(frozen=True, slots=True)
class TrainSummary:
    version: str
    metrics: dict[str, float]
    rows: int
    users: int
    items: int
    epochs_run: int
    best_epoch: int
    seconds: float
    artifacts_uri: str
    lake_run: str | None = None


def prepare(table: pa.Table) -> TrainingData:
    """Index users and items (first occurrence wins for their features); drop unusable rows."""
    missing = {"customerNumber", "productCode", "productRating", *USER_SPEC.categorical, *ITEM_SPEC.numeric}
    missing -= set(table.column_names)
    if missing:
        raise UserError(f"the training data lacks the columns {sorted(missing)}")
    cols = table.to_pydict()
    users: dict[int, int] = {}
    items: dict[str, int] = {}
    user_cols: dict[str, list[Any]] = {c: [] for c in (*USER_SPEC.categorical, *USER_SPEC.numeric)}
    item_cols: dict[str, list[Any]] = {c: [] for c in (*ITEM_SPEC.categorical, *ITEM_SPEC.numeric)}
    u_idx: list[int] = []
    i_idx: list[int] = []
    ratings: list[float] = []
    for row in range(table.num_rows):
        customer, code, rating = (
            cols["customerNumber"][row],
            cols["productCode"][row],
            cols["productRating"][row],
        )
        if customer is None or code is None or rating is None or not 1 <= float(rating) <= 5:
            continue
        u = users.get(int(customer))
        if u is None:
            u = users[int(customer)] = len(users)
            for c, values in user_cols.items():
                values.append(cols[c][row])
        i = items.get(str(code))
        if i is None:
            i = items[str(code)] = len(items)
            for c, values in item_cols.items():
                values.append(cols[c][row])
        u_idx.append(u)
        i_idx.append(i)
        ratings.append(float(rating))
    if len(ratings) < 10:
        raise UserError(f"the training data has {len(ratings)} usable ratings; at least 10 are needed")
    return TrainingData(
        list(users),
        user_cols,
        list(items),
        item_cols,
        np.array(u_idx, dtype=np.int64),
        np.array(i_idx, dtype=np.int64),
        np.array(ratings, dtype=np.float64),
    )


def _split(n: int, seed: int, val: float, test: float) -> tuple[npt.NDArray[np.int64], ...]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test))
    n_val = max(1, round(n * val))
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def popularity(
    item_index: npt.NDArray[np.int64], rating: npt.NDArray[np.float64], n_items: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """(damped mean rating, count) per item; an unrated item gets the global mean."""
    counts = np.bincount(item_index, minlength=n_items)
    sums = np.bincount(item_index, weights=rating, minlength=n_items)
    prior = float(rating.mean()) if rating.size else 3.0
    return (sums + PRIOR_WEIGHT * prior) / (counts + PRIOR_WEIGHT), counts


def rank_popular(
    item_ids: Sequence[str], item_index: npt.NDArray[np.int64], rating: npt.NDArray[np.float64]
) -> list[PopularItem]:
    """Every item, most popular first: damped mean rating, then number of ratings."""
    score, count = popularity(item_index, rating, len(item_ids))
    return [PopularItem(item_ids[i], float(score[i]), int(count[i])) for i in np.lexsort((-count, -score))]


def _subset(columns: dict[str, list[Any]], rows: Sequence[int]) -> dict[str, list[Any]]:
    return {c: [v[r] for r in rows] for c, v in columns.items()}


def _ranking(
    scores: npt.NDArray[np.float64],
    seen: list[set[int]],
    relevant: list[set[int]],
) -> tuple[float, float, float]:
    """(NDCG@10, hit-rate@10, catalog coverage@10) over users with at least one relevant item."""
    ndcg, hits, users = 0.0, 0, 0
    shown: set[int] = set()
    discounts = 1.0 / np.log2(np.arange(2, TOP_K + 2))
    for u, rel in enumerate(relevant):
        if not rel:
            continue
        row = scores[u].copy()
        if seen[u]:
            row[list(seen[u])] = -np.inf
        top = np.argsort(-row, kind="stable")[:TOP_K]
        gains = np.array([1.0 if int(i) in rel else 0.0 for i in top])
        ideal = discounts[: min(len(rel), TOP_K)].sum()
        ndcg += float((gains * discounts[: len(gains)]).sum() / ideal)
        hits += int(gains.any())
        users += 1
        shown.update(int(i) for i in top)
    if users == 0:
        return math.nan, math.nan, math.nan
    return ndcg / users, hits / users, len(shown) / scores.shape[1]


def fit(
    table: pa.Table,
    cfg: TrainSettings,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedModel:
    """Fit the feature parameters and the towers; evaluate on the held-out test split.

    Runs with ``cfg.torch_threads`` threads, deterministic algorithms and a seeded generator, and
    restores the process's torch settings and random state afterwards.
    """
    if any(width < 1 for width in cfg.hidden):
        raise UserError(f"hidden layer widths must be positive, got {cfg.hidden}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.torch_threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _fit(table, cfg, on_epoch)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fit(
    table: pa.Table,
    cfg: TrainSettings,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> TrainedModel:
    started = time.perf_counter()
    data = prepare(table)
    train_rows, val_rows, test_rows = _split(len(data.rating), cfg.seed, cfg.val_fraction, cfg.test_fraction)

    # feature parameters from the training split only (users/items seen in it)
    train_users = sorted(set(data.user_index[train_rows].tolist()))
    train_items = sorted(set(data.item_index[train_rows].tolist()))
    user_tf = FeatureTransform.fit(USER_SPEC, _subset(data.user_columns, train_users))
    item_tf = FeatureTransform.fit(ITEM_SPEC, _subset(data.item_columns, train_items))
    users_x = torch.from_numpy(user_tf.dense(data.user_columns))
    items_x = torch.from_numpy(item_tf.dense(data.item_columns))
    config = ModelConfig(user_tf.dim, item_tf.dim, tuple(cfg.hidden), cfg.embedding_dim)
    model = TwoTower(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    label = torch.from_numpy(((data.rating - 3.0) / 2.0).astype(np.float32))
    u_all = torch.from_numpy(data.user_index)
    i_all = torch.from_numpy(data.item_index)
    train_t = torch.from_numpy(train_rows)
    val_t = torch.from_numpy(val_rows)
    gen = torch.Generator().manual_seed(cfg.seed)

    def predict(rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(users_x[u_all[rows]], items_x[i_all[rows]])
        return out

    best_val, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            optimiser.zero_grad()
            loss = functional_mse(predict(rows), label[rows])
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        with torch.no_grad():
            val_mse = float(functional_mse(predict(val_t), label[val_t]))
        entry = {
            "epoch": float(epoch),
            "train_mse": total / len(order),
            "val_rmse": 2.0 * math.sqrt(val_mse),  # in rating units (1-5)
            "seconds": time.perf_counter() - started,
        }
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        if val_mse < best_val - 1e-6:
            best_val, best_epoch, stale = val_mse, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    metrics = _evaluate(
        model,
        users_x=users_x,
        items_x=items_x,
        data=data,
        train_rows=train_rows,
        val_rows=val_rows,
        test_rows=test_rows,
    )
    popular = rank_popular(data.item_ids, data.item_index, data.rating)
    return TrainedModel(
        config=config,
        state_dict={k: v.detach().clone() for k, v in best_state.items()},
        user_transform=user_tf,
        item_transform=item_tf,
        data=data,
        metrics=metrics,
        history=history,
        popular=popular,
        training={
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "ratings": {"train": len(train_rows), "validation": len(val_rows), "test": len(test_rows)},
            "settings": cfg.model_dump(),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


def functional_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = ((pred - target) ** 2).mean()
    return out


def _evaluate(
    model: TwoTower,
    *,
    users_x: torch.Tensor,
    items_x: torch.Tensor,
    data: TrainingData,
    train_rows: npt.NDArray[np.int64],
    val_rows: npt.NDArray[np.int64],
    test_rows: npt.NDArray[np.int64],
) -> dict[str, float]:
    with torch.no_grad():
        u_emb = model.user_tower(users_x).double().numpy()
        i_emb = model.item_tower(items_x).double().numpy()
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    scores = u_emb @ i_emb.T  # (users, items), scaled ratings
    test_u, test_i, test_r = data.user_index[test_rows], data.item_index[test_rows], data.rating[test_rows]
    pred = np.clip(3.0 + 2.0 * scores[test_u, test_i], 1.0, 5.0)
    train_mean = float(data.rating[train_rows].mean())
    rmse = float(np.sqrt(np.mean((pred - test_r) ** 2)))
    rmse_base = float(np.sqrt(np.mean((train_mean - test_r) ** 2)))

    seen: list[set[int]] = [set() for _ in range(n_users)]
    for rows in (train_rows, val_rows):
        for u, i in zip(data.user_index[rows].tolist(), data.item_index[rows].tolist(), strict=True):
            seen[u].add(i)
    relevant: list[set[int]] = [set() for _ in range(n_users)]
    for u, i, r in zip(test_u.tolist(), test_i.tolist(), test_r.tolist(), strict=True):
        if r >= RELEVANT:
            relevant[u].add(i)
    ndcg, hit, coverage = _ranking(scores, seen, relevant)
    pop_score, _ = popularity(data.item_index[train_rows], data.rating[train_rows], n_items)
    pop_scores = np.tile(pop_score, (n_users, 1))
    p_ndcg, p_hit, p_coverage = _ranking(pop_scores, seen, relevant)
    return {
        "rmse": rmse,
        "rmse_mean_baseline": rmse_base,
        "ndcg_at_10": ndcg,
        "hit_rate_at_10": hit,
        "catalog_coverage_at_10": coverage,
        "popular_ndcg_at_10": p_ndcg,
        "popular_hit_rate_at_10": p_hit,
        "popular_catalog_coverage_at_10": p_coverage,
        "test_ratings": float(len(test_rows)),
        "ranked_users": float(sum(1 for r in relevant if r)),
    }


def train(lake_uri: str, artifacts_uri: str, cfg: TrainSettings) -> TrainSummary:
    """Read the latest complete lake run, fit, evaluate and export a new artifact version."""
    from infra.lake import TRAINING_DATASET, latest_run, read_run
    from infra.objectstore import open_store
    from model_store.artifacts import export_trained

    started = time.perf_counter()
    run = latest_run(open_store(lake_uri), TRAINING_DATASET)
    table = read_run(open_store(lake_uri), run)
    log.info("training on lake run %s (%d rows)", run.run_id, table.num_rows)

    def progress(entry: dict[str, float]) -> None:
        log.info(
            "epoch %d/%d train_mse=%.4f val_rmse=%.4f",
            int(entry["epoch"]),
            cfg.epochs,
            entry["train_mse"],
            entry["val_rmse"],
            extra={"fields": {k: round(v, 4) for k, v in entry.items()}},
        )

    trained = fit(table, cfg, on_epoch=progress)
    trained.training["lake_run"] = run.run_id
    version = export_trained(artifacts_uri, trained)
    summary = TrainSummary(
        version=version,
        metrics=trained.metrics,
        rows=len(trained.data.rating),
        users=len(trained.data.user_ids),
        items=len(trained.data.item_ids),
        epochs_run=int(trained.training["epochs_run"]),
        best_epoch=int(trained.training["best_epoch"]),
        seconds=time.perf_counter() - started,
        artifacts_uri=artifacts_uri,
        lake_run=run.run_id,
    )
    m = trained.metrics
    log.info(
        "trained %s: rmse %.3f (mean baseline %.3f), ndcg@10 %.3f (popular %.3f), "
        "hit@10 %.3f (popular %.3f), coverage %.2f (popular %.2f)",
        version,
        m["rmse"],
        m["rmse_mean_baseline"],
        m["ndcg_at_10"],
        m["popular_ndcg_at_10"],
        m["hit_rate_at_10"],
        m["popular_hit_rate_at_10"],
        m["catalog_coverage_at_10"],
        m["popular_catalog_coverage_at_10"],
    )
    return summary
