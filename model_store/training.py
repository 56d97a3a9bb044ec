"""Training and evaluation of the hybrid two-tower model on implicit feedback.

``fit(table, cfg)`` is the pure part (a training table in, a :class:`TrainedModel` out);
``train(lake_uri, artifacts_uri, cfg)`` reads the latest complete lake run, fits, and exports a new
artifact version.

**What is learned.** Every (customer, product) pair in the ratings is a positive: the customer
bought (and rated) it. Each tower adds an ID embedding (customer, product) to its feature MLP's
output (:class:`model_store.model.Tower`), so a known customer gets a personal vector and a new
one still gets a vector from its features and the learned ``unknown`` row; a share of the IDs
(``feature_dropout``) is replaced by ``unknown`` on every batch so that this cold-start path is
trained too. The loss is an in-batch sampled softmax over the batch's items with the logQ
popularity correction (each logit minus the log of its item's share of the training pairs, so the
in-batch negatives, drawn in proportion to popularity, do not push popular items down), at
``temperature``; repeats of the same item in a batch are not negatives. The rating is an
auxiliary head (``rating_weight``): an affine map of the dot product fitted to ``(r - 3) / 2`` with
MSE, which gives the RMSE figure; it is a small weight because a rating says less than the
purchase itself (on the real shop's benchmark, ratings carry no signal at all).

**Evaluation** (the manifest's ``metrics``; all seeded):

- ``cold_fraction`` of the customers are held out whole: the cold-start customers, ranked from
  their features only;
- of every other customer, ``test_fraction`` of their pairs are held out (leave-20%-out), and
  ``val_fraction`` more for early stopping (validation NDCG@10);
- ``ndcg_at_10``, ``hit_rate_at_10``, ``recall_at_10``, ``catalog_coverage_at_10``: the known
  customers' held-out pairs, ranked among every item they did not buy in training; ``cold_*``: the
  cold customers' pairs; ``popular_*`` and ``cold_popular_*``: the same candidates ranked by
  purchase count in the training split; ``rmse`` of the rating head on the known customers'
  held-out pairs against ``rmse_mean_baseline`` (the training mean).

**The cold-start prior.** A new customer's vector comes from features that may say little about
what they buy; popularity is then the better guess. After the evaluation run, the user tower's
``unknown`` row is shifted by ``scale * d``, where ``d`` is the least-squares direction whose dot
product with each item's vector fits the item's centred ``log(1 + purchase count)`` and ``scale`` is
a weight times the mean norm of the features-only vectors: a new customer's scores then gain about
``weight`` x log-popularity. The weight (of ``PRIOR_GRID``; 0 = no prior) is the smallest whose
NDCG@10 + hit@10 is within ``PRIOR_TOLERANCE`` of the best on ``cold_val_fraction`` more customers
held out whole from the evaluation run, ranked from their features only (never the test pairs or
the cold-start test customers; ranking known customers from their features instead picks 0, since
the feature tower has learned them); ``cold_*`` are measured with it, ``cold_no_prior_*`` without.
The exported model gets the same weight with its own direction and scale. Known customers' vectors
(their ID rows) and items do not change; serving needs nothing new. It is off by default
(``cold_prior``): on the real shop it made new customers' answers about as good as popularity's,
not better (docs/model.md), and on the generated shop, whose profiles do predict purchases, it
made them worse.

**The exported model** is then fitted again on every pair (``refit``), with the same settings, for
the number of epochs early stopping chose: the figures describe the recipe, the export uses all the
data. Reproducible on CPU: seeded split, initialisation and shuffles, deterministic algorithms, a
fixed number of torch threads.
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
from torch.nn import functional

from core.errors import UserError
from infra.logs import get_logger
from model_store.config import TrainSettings
from model_store.features import ITEM_SPEC, USER_SPEC, FeatureTransform
from model_store.model import ModelConfig, ServingTower, TwoTower

__all__ = [
    "LOSS",
    "RATING",
    "PairSplit",
    "PopularItem",
    "TrainSummary",
    "TrainedModel",
    "TrainingData",
    "fit",
    "popularity",
    "prepare",
    "rank_popular",
    "ranking_metrics",
    "split_pairs",
    "train",
]

log = get_logger(__name__)

TOP_K = 10
PRIOR_WEIGHT = 5.0  # popularity's tie-break: the mean rating shrunk toward the global mean
LOSS = "in-batch sampled softmax with logQ popularity correction"
RATING = (
    "auxiliary head: affine map of the dot product -> (rating - 3) / 2, trained along with MSE, "
    "then refitted by least squares on the validation pairs"
)
MAX_EVAL_USERS = 5000  # early stopping ranks at most this many validation customers per epoch
PRIOR_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)  # cold-start popularity prior weights tried
PRIOR_TOLERANCE = 0.01  # a larger weight must beat the smaller ones by more (NDCG@10 + hit@10)


@dataclass(frozen=True, slots=True)
class TrainingData:
    """The training table as indices: one row of features per user and per item, one entry per
    distinct (user, item) pair (a repeated pair keeps its last rating)."""

    user_ids: list[int]
    user_columns: dict[str, list[Any]]  # USER_SPEC columns, one entry per user
    item_ids: list[str]
    item_columns: dict[str, list[Any]]  # ITEM_SPEC columns, one entry per item
    user_index: npt.NDArray[np.int64]  # per pair
    item_index: npt.NDArray[np.int64]
    rating: npt.NDArray[np.float64]

    def bought(self) -> list[list[str]]:
        """Every user's items (their training pairs), in item order."""
        out: list[list[int]] = [[] for _ in self.user_ids]
        for u, i in zip(self.user_index.tolist(), self.item_index.tolist(), strict=True):
            out[u].append(i)
        return [[self.item_ids[i] for i in sorted(items)] for items in out]


@dataclass(frozen=True, slots=True)
class PopularItem:
    id: str
    score: float  # purchase count in the training data
    count: int


@dataclass(frozen=True, slots=True)
class PairSplit:
    """Row numbers (into ``TrainingData``'s pairs) of each part, and the cold-start users."""

    train: npt.NDArray[np.int64]
    validation: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]  # known users' held-out pairs
    cold: npt.NDArray[np.int64]  # every pair of the cold-start users
    cold_users: npt.NDArray[np.int64]
    # every pair of the users held out whole to choose the cold-start prior's weight
    cold_validation: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class TrainedModel:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # everything, the customers' ID embeddings included
    user_transform: FeatureTransform
    item_transform: FeatureTransform
    data: TrainingData
    metrics: dict[str, float]
    history: list[dict[str, float]]
    popular: list[PopularItem]
    training: dict[str, Any] = field(default_factory=dict)

    def user_embeddings(self) -> npt.NDArray[np.float32]:
        """Every training customer's vector: features plus their ID embedding."""
        tower = ServingTower.from_state_dict(self.state_dict, "user_tower")
        ids = np.arange(len(self.data.user_ids), dtype=np.int64) if tower.hybrid else None
        return tower.embed(self.user_transform.dense(self.data.user_columns), ids)

    def item_embeddings(self) -> npt.NDArray[np.float32]:
        tower = ServingTower.from_state_dict(self.state_dict, "item_tower")
        ids = np.arange(len(self.data.item_ids), dtype=np.int64) if tower.hybrid else None
        return tower.embed(self.item_transform.dense(self.data.item_columns), ids)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that are exported: without the customers' ID embeddings (personal data: a
        customer's vector lives in ``user_embeddings.csv``, which ``recsys forget`` edits)."""
        return {k: v for k, v in self.state_dict.items() if not k.startswith("user_tower.ids.")}


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
    """Index users and items (first occurrence wins for their features); drop unusable rows; one
    entry per distinct pair (the last rating of a repeated pair)."""
    missing = {"customerNumber", "productCode", "productRating", *USER_SPEC.categorical, *ITEM_SPEC.numeric}
    missing -= set(table.column_names)
    if missing:
        raise UserError(f"the training data lacks the columns {sorted(missing)}")
    cols = table.to_pydict()
    users: dict[int, int] = {}
    items: dict[str, int] = {}
    user_cols: dict[str, list[Any]] = {c: [] for c in (*USER_SPEC.categorical, *USER_SPEC.numeric)}
    item_cols: dict[str, list[Any]] = {c: [] for c in (*ITEM_SPEC.categorical, *ITEM_SPEC.numeric)}
    pairs: dict[tuple[int, int], float] = {}
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
        pairs[(u, i)] = float(rating)
    if len(pairs) < 10:
        raise UserError(f"the training data has {len(pairs)} usable ratings; at least 10 are needed")
    keys = list(pairs)
    return TrainingData(
        list(users),
        user_cols,
        list(items),
        item_cols,
        np.array([u for u, _ in keys], dtype=np.int64),
        np.array([i for _, i in keys], dtype=np.int64),
        np.array(list(pairs.values()), dtype=np.float64),
    )


def split_pairs(
    user_index: npt.NDArray[np.int64],
    n_users: int,
    seed: int,
    *,
    test_fraction: float,
    val_fraction: float,
    cold_fraction: float,
    cold_val_fraction: float = 0.0,
) -> PairSplit:
    """The evaluation split (see the module docstring): ``cold_fraction`` of the users whole, and
    ``cold_val_fraction`` more whole (the cold-start prior's validation), then per remaining user
    ``round(test_fraction * n)`` of their pairs as test and ``round(val_fraction * n)`` as
    validation (a user keeps at least one training pair)."""
    rng = np.random.default_rng([seed, 18])
    present = np.unique(user_index)
    n_cold = round(len(present) * cold_fraction) if len(present) >= 10 else 0
    n_cold_val = round(len(present) * cold_val_fraction) if len(present) >= 10 else 0
    shuffled = rng.permutation(present)
    cold_users = np.sort(shuffled[:n_cold])
    is_cold = np.zeros(n_users, dtype=bool)
    is_cold[cold_users] = True
    is_cold_val = np.zeros(n_users, dtype=bool)
    is_cold_val[shuffled[n_cold : n_cold + n_cold_val]] = True
    order = rng.permutation(len(user_index))
    by_user: list[list[int]] = [[] for _ in range(n_users)]
    for row in order.tolist():
        by_user[int(user_index[row])].append(row)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    cold: list[int] = []
    cold_val: list[int] = []
    for u, rows in enumerate(by_user):
        if is_cold[u]:
            cold += rows
            continue
        if is_cold_val[u]:
            cold_val += rows
            continue
        n_test = min(round(len(rows) * test_fraction), max(0, len(rows) - 1))
        n_val = min(round(len(rows) * val_fraction), max(0, len(rows) - 1 - n_test))
        test += rows[:n_test]
        val += rows[n_test : n_test + n_val]
        train += rows[n_test + n_val :]

    def arr(rows: list[int]) -> npt.NDArray[np.int64]:
        return np.array(sorted(rows), dtype=np.int64)

    return PairSplit(arr(train), arr(val), arr(test), arr(cold), cold_users.astype(np.int64), arr(cold_val))


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
    """Every item, most popular first: purchase count (pairs), then damped mean rating."""
    mean, count = popularity(item_index, rating, len(item_ids))
    return [PopularItem(item_ids[i], float(count[i]), int(count[i])) for i in np.lexsort((-mean, -count))]


def _subset(columns: dict[str, list[Any]], rows: Sequence[int]) -> dict[str, list[Any]]:
    return {c: [v[r] for r in rows] for c, v in columns.items()}


def ranking_metrics(
    scores: npt.NDArray[np.floating[Any]],
    seen: Sequence[set[int]],
    relevant: Sequence[set[int]],
    k: int = TOP_K,
) -> dict[str, float]:
    """NDCG@k, hit-rate@k, recall@k and catalog coverage@k over the users (rows of ``scores``)
    with at least one relevant item; each user's ``seen`` items are left out of their ranking.
    Binary relevance; recall is over min(k, relevant) so a perfect list scores 1."""
    ndcg = hits = recall = 0.0
    users = 0
    shown: set[int] = set()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for u, rel in enumerate(relevant):
        if not rel:
            continue
        row = np.array(scores[u], dtype=np.float64)
        if seen[u]:
            row[list(seen[u])] = -np.inf
        top = np.argsort(-row, kind="stable")[:k]
        gains = np.array([1.0 if int(i) in rel else 0.0 for i in top])
        ndcg += float((gains * discounts[: len(gains)]).sum() / discounts[: min(len(rel), k)].sum())
        hits += float(gains.any())
        recall += float(gains.sum() / min(len(rel), k))
        users += 1
        shown.update(int(i) for i in top)
    if users == 0:
        return {
            "ndcg": math.nan,
            "hit_rate": math.nan,
            "recall": math.nan,
            "coverage": math.nan,
            "users": 0.0,
        }
    return {
        "ndcg": ndcg / users,
        "hit_rate": hits / users,
        "recall": recall / users,
        "coverage": len(shown) / scores.shape[1],
        "users": float(users),
    }


def fit(
    table: pa.Table,
    cfg: TrainSettings,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedModel:
    """Evaluate the recipe on the held-out split, then fit the exported model on every pair.

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
            return _fit(table, cfg, on_epoch)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@dataclass
class _Run:
    model: TwoTower
    user_tf: FeatureTransform
    item_tf: FeatureTransform
    users_x: torch.Tensor
    items_x: torch.Tensor
    history: list[dict[str, float]]
    best_epoch: int


def _features(
    data: TrainingData, rows: npt.NDArray[np.int64]
) -> tuple[FeatureTransform, FeatureTransform, torch.Tensor, torch.Tensor]:
    """Feature parameters fitted on the users and items of ``rows``; every user's and item's rows."""
    users = sorted(set(data.user_index[rows].tolist()))
    items = sorted(set(data.item_index[rows].tolist()))
    user_tf = FeatureTransform.fit(USER_SPEC, _subset(data.user_columns, users))
    item_tf = FeatureTransform.fit(ITEM_SPEC, _subset(data.item_columns, items))
    return (
        user_tf,
        item_tf,
        torch.from_numpy(user_tf.dense(data.user_columns)),
        torch.from_numpy(item_tf.dense(data.item_columns)),
    )


def _train_run(
    data: TrainingData,
    rows: npt.NDArray[np.int64],
    cfg: TrainSettings,
    *,
    epochs: int,
    validate: Callable[[TwoTower, torch.Tensor, torch.Tensor], float] | None,
    on_epoch: Callable[[dict[str, float]], None] | None,
    started: float,
    phase: str,
    head_pairs: npt.NDArray[np.int64] | None = None,
) -> _Run:
    """Fit on the pairs ``rows`` for up to ``epochs`` (early stopping on ``validate`` when given)."""
    torch.manual_seed(cfg.seed)
    user_tf, item_tf, users_x, items_x = _features(data, rows)
    config = ModelConfig(user_tf.dim, item_tf.dim, tuple(cfg.hidden), cfg.embedding_dim, kind="hybrid")
    model = TwoTower(config, n_users=len(data.user_ids), n_items=len(data.item_ids))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    u_all = torch.from_numpy(data.user_index[rows])
    i_all = torch.from_numpy(data.item_index[rows])
    label = torch.from_numpy(((data.rating[rows] - 3.0) / 2.0).astype(np.float32))
    counts = torch.bincount(i_all, minlength=len(data.item_ids)).to(torch.float32)
    log_q = torch.log(counts.clamp(min=1.0) / counts.sum())
    best, best_epoch, best_state, stale = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(rows), generator=gen)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            u, i = u_all[batch], i_all[batch]
            drop_u = torch.rand(len(batch), generator=gen) < cfg.feature_dropout
            drop_i = torch.rand(len(batch), generator=gen) < cfg.feature_dropout
            user = model.user_tower(users_x[u], torch.where(drop_u, -1, u))
            item = model.item_tower(items_x[i], torch.where(drop_i, -1, i))
            sim = user @ item.T
            logits = sim / cfg.temperature - log_q[i][None, :]
            repeats = (i[:, None] == i[None, :]) & ~torch.eye(len(batch), dtype=torch.bool)
            logits = logits.masked_fill(repeats, -torch.inf)
            loss = functional.cross_entropy(logits, torch.arange(len(batch)))
            if cfg.rating_weight > 0:
                predicted = model.rating_head(sim.diagonal()[:, None]).squeeze(1)
                loss = loss + cfg.rating_weight * ((predicted - label[batch]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        entry = {"epoch": float(epoch), "loss": total / max(1, len(rows))}
        if validate is not None:
            model.eval()
            entry["val_ndcg_at_10"] = validate(model, users_x, items_x)
        entry["seconds"] = time.perf_counter() - started
        history.append(entry)
        if on_epoch is not None:
            on_epoch({**entry, "phase": 0.0 if phase == "evaluation" else 1.0})
        if validate is None:
            best_epoch = epoch
            continue
        if entry["val_ndcg_at_10"] > best + 1e-6:
            best, best_epoch, stale = entry["val_ndcg_at_10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if validate is not None:
        model.load_state_dict(best_state)
    model.eval()
    head_rows = rows if head_pairs is None or not len(head_pairs) else head_pairs
    _fit_rating_head(model, users_x, items_x, data, head_rows)
    return _Run(model, user_tf, item_tf, users_x, items_x, history, best_epoch)


def _fit_rating_head(
    model: TwoTower,
    users_x: torch.Tensor,
    items_x: torch.Tensor,
    data: TrainingData,
    rows: npt.NDArray[np.int64],
) -> None:
    """The rating head's final weights: least squares of the scaled rating on the dot product over
    the pairs ``rows`` (the validation pairs when there are some: a trained pair's dot product is
    high whatever its rating, so the map is fitted where the pairs are new to the model, like the
    ones it will be asked about)."""
    users = torch.from_numpy(data.user_index[rows])
    items = torch.from_numpy(data.item_index[rows])
    label = torch.from_numpy((data.rating[rows] - 3.0) / 2.0)
    users_x, items_x = users_x[users], items_x[items]
    with torch.no_grad():
        dots = (model.user_tower(users_x, users) * model.item_tower(items_x, items)).sum(dim=1).double()
        target = label.double()
        var = float(((dots - dots.mean()) ** 2).mean())
        slope = float(((dots - dots.mean()) * (target - target.mean())).mean()) / var if var > 1e-12 else 0.0
        model.rating_head.weight.fill_(slope)
        model.rating_head.bias.fill_(float(target.mean()) - slope * float(dots.mean()))


def _embeddings(
    model: TwoTower,
    users_x: torch.Tensor,
    items_x: torch.Tensor,
    known_items: npt.NDArray[np.bool_],
    *,
    rows: Sequence[int] | None = None,
    known_users: bool = True,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Vectors of the users ``rows`` (default all; by ID, or from features only when not
    ``known_users``) and of every item (by ID where ``known_items``, the unknown row otherwise)."""
    picked = torch.arange(users_x.shape[0]) if rows is None else torch.tensor(list(rows), dtype=torch.int64)
    with torch.no_grad():
        user_ids = picked if known_users else torch.full_like(picked, -1)
        users = model.user_tower(users_x[picked], user_ids).double().numpy()
        item_ids = torch.where(torch.from_numpy(known_items), torch.arange(items_x.shape[0]), -1)
        items = model.item_tower(items_x, item_ids).double().numpy()
    return users, items


def _popularity_direction(
    items: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], float]:
    """The direction ``d`` of the embedding space whose dot product with each item's vector best
    fits (least squares) the item's centred ``log(1 + purchase count)``, and the fit's R^2: adding
    ``c * d`` to a user vector adds about ``c`` times log-popularity to every item's score."""
    target = np.log1p(counts)
    target = target - target.mean()
    direction, *_ = np.linalg.lstsq(items, target, rcond=None)
    total = float((target**2).sum())
    r2 = 1.0 - float(((items @ direction - target) ** 2).sum()) / total if total > 0 else 0.0
    return direction, r2


@dataclass(frozen=True, slots=True)
class _Prior:
    weight: float
    scale: float  # weight x the mean norm of the features-only user vectors before normalisation
    direction: npt.NDArray[np.float64]
    r2: float

    def to_json(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "scale": self.scale,
            "r2": round(self.r2, 4),
            "direction": [float(v) for v in self.direction],
        }


def _prior_for(
    model: TwoTower,
    users_x: torch.Tensor,
    items_x: torch.Tensor,
    known_items: npt.NDArray[np.bool_],
    *,
    counts: npt.NDArray[np.float64],
    weight: float,
) -> _Prior:
    """The prior of ``weight`` for this model: its items' popularity direction, scaled by the mean
    norm of the (unnormalised) features-only vectors of every user, so that the weight means the
    same for every model: the share of the cold-start vector the popularity direction takes."""
    _, items = _embeddings(model, users_x[:1], items_x, known_items)
    direction, r2 = _popularity_direction(items, counts)
    tower = model.user_tower
    assert tower.unknown is not None  # a hybrid tower
    with torch.no_grad():
        raw = (tower.layers(users_x) + tower.unknown).double().numpy()
    norm = float(np.linalg.norm(raw, axis=1).mean()) if len(raw) else 1.0
    return _Prior(weight, weight * norm, direction, r2)


def _apply_prior(model: TwoTower, prior: _Prior) -> None:
    """Add the prior to the user tower's ``unknown`` row: every features-only vector moves toward
    the popular items' direction; a known customer's vector (their ID row) does not change."""
    unknown = model.user_tower.unknown
    assert unknown is not None
    with torch.no_grad():
        unknown.add_(torch.from_numpy(prior.scale * prior.direction).to(unknown.dtype))


def _choose_prior(
    run: _Run,
    counts: npt.NDArray[np.float64],
    known_items: npt.NDArray[np.bool_],
    *,
    rows: Sequence[int],
    seen: Sequence[set[int]],
    relevant: Sequence[set[int]],
) -> tuple[_Prior, dict[str, float]]:
    """The smallest prior weight of ``PRIOR_GRID`` whose NDCG@10 + hit@10 for the features-only
    vectors of ``rows`` (the customers held out whole for it: every pair of theirs is relevant) is
    within ``PRIOR_TOLERANCE`` of the best weight's. Leaves ``run.model`` as it was."""
    scores: dict[str, float] = {}
    priors: list[tuple[_Prior, float]] = []
    unknown = run.model.user_tower.unknown
    assert unknown is not None
    original = unknown.detach().clone()
    for weight in PRIOR_GRID:
        prior = _prior_for(run.model, run.users_x, run.items_x, known_items, counts=counts, weight=weight)
        _apply_prior(run.model, prior)
        try:
            users, items = _embeddings(
                run.model, run.users_x, run.items_x, known_items, rows=rows, known_users=False
            )
        finally:
            with torch.no_grad():
                unknown.copy_(original)
        result = ranking_metrics(users @ items.T, seen, relevant)
        score = result["ndcg"] + result["hit_rate"]
        scores[f"{weight:g}"] = round(score, 4)
        priors.append((prior, score))
    best = max(score for _, score in priors)
    return next(prior for prior, score in priors if score >= best - PRIOR_TOLERANCE), scores


def _sets(user_index: npt.NDArray[np.int64], item_index: npt.NDArray[np.int64], n: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for u, i in zip(user_index.tolist(), item_index.tolist(), strict=True):
        out[u].add(i)
    return out


def _fit(
    table: pa.Table, cfg: TrainSettings, on_epoch: Callable[[dict[str, float]], None] | None
) -> TrainedModel:
    started = time.perf_counter()
    data = prepare(table)
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    split = split_pairs(
        data.user_index,
        n_users,
        cfg.seed,
        test_fraction=cfg.test_fraction,
        val_fraction=cfg.val_fraction,
        cold_fraction=cfg.cold_fraction,
        cold_val_fraction=cfg.cold_val_fraction if cfg.cold_prior else 0.0,
    )
    train_seen = _sets(data.user_index[split.train], data.item_index[split.train], n_users)
    val_relevant = _sets(data.user_index[split.validation], data.item_index[split.validation], n_users)
    val_users = [u for u, rel in enumerate(val_relevant) if rel][:MAX_EVAL_USERS]
    train_items = np.zeros(n_items, dtype=bool)
    train_items[data.item_index[split.train]] = True

    def validate(model: TwoTower, users_x: torch.Tensor, items_x: torch.Tensor) -> float:
        if not val_users:
            return 0.0
        users, items = _embeddings(model, users_x, items_x, train_items, rows=val_users)
        seen = [train_seen[u] for u in val_users]
        return ranking_metrics(users @ items.T, seen, [val_relevant[u] for u in val_users])["ndcg"]

    has_validation = len(split.validation) > 0
    run = _train_run(
        data,
        split.train,
        cfg,
        epochs=cfg.epochs,
        validate=validate if has_validation else None,
        on_epoch=on_epoch,
        started=started,
        phase="evaluation",
        head_pairs=split.validation,
    )
    # the cold-start popularity prior: its weight chosen on the validation pairs, then the test
    # figures (cold_*) measured with it; cold_no_prior_* are the features-only vectors without it
    no_prior = _cold_metrics(run, data, split, train_items)
    train_counts = np.bincount(data.item_index[split.train], minlength=n_items).astype(np.float64)
    prior_scores: dict[str, float] = {}
    prior = _Prior(0.0, 0.0, np.zeros(cfg.embedding_dim), 0.0)
    cold_val = _sets(data.user_index[split.cold_validation], data.item_index[split.cold_validation], n_users)
    cold_val_users = [u for u, rel in enumerate(cold_val) if rel]
    if cfg.cold_prior and cold_val_users:
        prior, prior_scores = _choose_prior(
            run,
            train_counts,
            train_items,
            rows=cold_val_users,
            seen=[set() for _ in cold_val_users],
            relevant=[cold_val[u] for u in cold_val_users],
        )
        _apply_prior(run.model, prior)
    metrics = _evaluate(run, data, split, train_seen, train_items)
    metrics.update(
        {f"cold_no_prior_{k}": v for k, v in no_prior.items() if k.endswith("_at_10") and "popular" not in k}
    )
    history = [{**h, "phase": 0.0} for h in run.history]
    final = run
    if cfg.refit:
        final = _train_run(
            data,
            np.arange(len(data.rating), dtype=np.int64),
            cfg,
            epochs=max(1, run.best_epoch),
            validate=None,
            on_epoch=on_epoch,
            started=started,
            phase="refit",
        )
        history += [{**h, "phase": 1.0} for h in final.history]
        if prior.weight:  # the same weight, with the exported model's own direction and scale
            counts = np.bincount(data.item_index, minlength=n_items).astype(np.float64)
            known = np.ones(n_items, dtype=bool)
            prior = _prior_for(
                final.model, final.users_x, final.items_x, known, counts=counts, weight=prior.weight
            )
            _apply_prior(final.model, prior)
    popular = rank_popular(data.item_ids, data.item_index, data.rating)
    return TrainedModel(
        config=final.model.config,
        state_dict={k: v.detach().clone() for k, v in final.model.state_dict().items()},
        user_transform=final.user_tf,
        item_transform=final.item_tf,
        data=data,
        metrics=metrics,
        history=history,
        popular=popular,
        training={
            "kind": "hybrid",
            "loss": LOSS,
            "rating": RATING,
            "temperature": cfg.temperature,
            "feature_dropout": cfg.feature_dropout,
            "rating_weight": cfg.rating_weight,
            "cold_start": (
                "an unknown customer or product gets the learned 'unknown' vector in place of its "
                "ID embedding (trained by feature dropout), plus its features"
            ),
            "cold_prior": {
                **prior.to_json(),
                "what": (
                    "added to the exported user tower's 'unknown' row: scale x direction, where "
                    "direction is the least-squares fit of the items' centred log(1 + purchase count) "
                    "on their vectors, so a new customer's scores gain about weight x log-popularity "
                    "(relative to their vector's norm); known customers are unchanged"
                ),
                "chosen_on": (
                    f"{cfg.cold_val_fraction:.0%} of the customers held out whole from the evaluation "
                    "run (not the cold-start test customers), ranked from features only: NDCG@10 + "
                    "hit@10 per weight"
                ),
                "validation": prior_scores,
            },
            "epochs_run": len(run.history),
            "best_epoch": run.best_epoch,
            "refit_on_all_pairs": cfg.refit,
            "pairs": {
                "train": len(split.train),
                "validation": len(split.validation),
                "test": len(split.test),
                "cold_start": len(split.cold),
                "cold_start_validation": len(split.cold_validation),
                "all": len(data.rating),
            },
            "evaluation": (
                f"seeded: {cfg.cold_fraction:.0%} of the customers held out whole (cold start, features "
                f"only); of the others, {cfg.test_fraction:.0%} of each customer's pairs held out (test) "
                f"and {cfg.val_fraction:.0%} for early stopping (validation NDCG@10); a held-out pair is "
                "relevant, items bought in training are not ranked; popularity = purchase count in training"
            ),
            "settings": cfg.model_dump(),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


def _cold_metrics(
    run: _Run, data: TrainingData, split: PairSplit, train_items: npt.NDArray[np.bool_]
) -> dict[str, float]:
    """The cold-start customers' pairs ranked from their features only (``ndcg_at_10``, ...) and by
    purchase count in training (``popular_ndcg_at_10``, ...); ``users_ranked``."""
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    users, items = _embeddings(run.model, run.users_x, run.items_x, train_items, known_users=False)
    counts = np.bincount(data.item_index[split.train], minlength=n_items).astype(np.float64)
    relevant_all = _sets(data.user_index[split.cold], data.item_index[split.cold], n_users)
    rows = [u for u, rel in enumerate(relevant_all) if rel]
    seen: list[set[int]] = [set() for _ in rows]
    relevant = [relevant_all[u] for u in rows]
    out: dict[str, float] = {}
    for prefix, scores in (("", users[rows] @ items.T), ("popular_", np.tile(counts, (len(rows), 1)))):
        result = ranking_metrics(scores, seen, relevant)
        out[f"{prefix}ndcg_at_10"] = result["ndcg"]
        out[f"{prefix}hit_rate_at_10"] = result["hit_rate"]
        out[f"{prefix}recall_at_10"] = result["recall"]
        out[f"{prefix}catalog_coverage_at_10"] = result["coverage"]
    out["users_ranked"] = float(len(rows))
    return out


def _evaluate(
    run: _Run,
    data: TrainingData,
    split: PairSplit,
    train_seen: list[set[int]],
    train_items: npt.NDArray[np.bool_],
) -> dict[str, float]:
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    model = run.model
    users, items = _embeddings(model, run.users_x, run.items_x, train_items)
    metrics: dict[str, float] = {}
    counts = np.bincount(data.item_index[split.train], minlength=n_items).astype(np.float64)
    popular = np.tile(counts, (1, 1))

    test_relevant = _sets(data.user_index[split.test], data.item_index[split.test], n_users)
    rows = [u for u, rel in enumerate(test_relevant) if rel]
    seen = [train_seen[u] for u in rows]
    relevant = [test_relevant[u] for u in rows]
    for prefix, scores in (("", users[rows] @ items.T), ("popular_", np.repeat(popular, len(rows), axis=0))):
        result = ranking_metrics(scores, seen, relevant)
        metrics[f"{prefix}ndcg_at_10"] = result["ndcg"]
        metrics[f"{prefix}hit_rate_at_10"] = result["hit_rate"]
        metrics[f"{prefix}recall_at_10"] = result["recall"]
        metrics[f"{prefix}catalog_coverage_at_10"] = result["coverage"]
    metrics["ranked_users"] = float(len(rows))

    metrics.update({f"cold_{k}": v for k, v in _cold_metrics(run, data, split, train_items).items()})
    metrics["cold_users"] = metrics.pop("cold_users_ranked")

    test_u, test_i = data.user_index[split.test], data.item_index[split.test]
    test_r = data.rating[split.test]
    train_mean = float(data.rating[split.train].mean())
    if len(split.test):
        with torch.no_grad():
            dots = torch.from_numpy((users[test_u] * items[test_i]).sum(axis=1).astype(np.float32))
            scaled = model.rating_head(dots[:, None]).squeeze(1).double().numpy()
        predicted = np.clip(3.0 + 2.0 * scaled, 1.0, 5.0)
        metrics["rmse"] = float(np.sqrt(np.mean((predicted - test_r) ** 2)))
        metrics["rmse_mean_baseline"] = float(np.sqrt(np.mean((train_mean - test_r) ** 2)))
    else:
        metrics["rmse"] = metrics["rmse_mean_baseline"] = math.nan
    metrics["test_pairs"] = float(len(split.test))
    return metrics


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
        phase = "refit" if entry.get("phase") else "evaluation"
        val = f" val_ndcg@10={entry['val_ndcg_at_10']:.4f}" if "val_ndcg_at_10" in entry else ""
        log.info(
            "%s epoch %d loss=%.4f%s",
            phase,
            int(entry["epoch"]),
            entry["loss"],
            val,
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
        "trained %s: ndcg@10 %.3f (popular %.3f), hit@10 %.3f (popular %.3f), recall@10 %.3f, "
        "coverage %.2f; cold start ndcg@10 %.3f (popular %.3f), hit@10 %.3f (popular %.3f), "
        "popularity prior weight %g; rmse %.3f (mean baseline %.3f)",
        version,
        m["ndcg_at_10"],
        m["popular_ndcg_at_10"],
        m["hit_rate_at_10"],
        m["popular_hit_rate_at_10"],
        m["recall_at_10"],
        m["catalog_coverage_at_10"],
        m["cold_ndcg_at_10"],
        m["cold_popular_ndcg_at_10"],
        m["cold_hit_rate_at_10"],
        m["cold_popular_hit_rate_at_10"],
        trained.training["cold_prior"]["weight"],
        m["rmse"],
        m["rmse_mean_baseline"],
    )
    return summary
