"""``ModelRecommender``: the active model version + pgvector, batch-first (``core.ports.Recommender``).

One ``recommend_batch`` call does:

1. features: the distinct (city, country, credit limit) tuples of the batch, normalised and encoded
   with the fitted parameters (numpy, once per batch, no scikit-learn call per row); unknown
   categories encode as zeros, and a
   user the model knows nothing of (no known category, no credit limit) gets the popular items;
   the version's candidate cache answers the tuples (and browsed codes) it has seen before, so
   steps 2 and 3 run only for the rest (``core.prefix_cache``: a list fetched for depth
   ``d`` answers every depth up to ``d``; bounded, least recently used out, one per version);
2. model: one forward pass of the user tower over those tuples, in NumPy
   (``model_store.serving.NumpyTower``: the trained torch tower's serving copy, from the arrays
   ``recsys load-vectors`` stores in ``model_versions.user_tower``; no torch in the process), in a
   one-thread executor so the event loop stays free; the forward is row-independent by
   construction, so a request gets bit-identical vectors alone or in any batch;
3. database: ONE statement -- ``unnest`` of the query vectors with a ``LATERAL`` HNSW top-k per
   vector, ``UNION ALL`` the precomputed neighbours of every browsed code of the batch;
4. ranking (pure, ``core.recommendations``): browsed and cart items are excluded from the
   recommendations, the neighbour lists are merged (cart items first) and an empty answer becomes the
   popular items, marked ``fallback=True``.

HNSW scans run with the version's ``hnsw.ef_search`` (the width the loader measured to reach its
recall target on that catalog, ``DEFAULT_EF_SEARCH`` for a version loaded without one; an explicit
``ef_search`` overrides it) and ``hnsw.iterative_scan = strict_order`` (set
transaction-locally inside the same statement), so a scan returns the same items in the same order
whatever LIMIT it is given: the answer for a request does not depend on the rest of its batch, and
requests with more exclusions than ``ef_search`` still get ``k`` items.

A version loaded before the arrays were stored (``user_tower`` NULL) is read from its torch
state_dict instead: only that path imports torch (once, logged), and it serves through the same
NumPy tower.

Hot reload: all of a version's state (weights, feature parameters, its tables, its popular items)
is one immutable object (its caches start empty); ``refresh()`` builds the new one off the event
loop and swaps a single reference, so a batch runs entirely on one version and names it in every
answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector import Vector

from core.errors import (
    ArtifactError,
    DatabaseUnavailable,
    DataRejected,
    ModelNotReady,
    NotFoundError,
    UserError,
)
from core.events import UserFeatures
from core.prefix_cache import PrefixCache
from core.recommendations import (
    Recommendation,
    RecommendRequest,
    ScoredItem,
    SimilarItems,
    Source,
    browse_order,
    exclude,
    merge_similar,
)
from infra.logs import get_logger
from model_store.features import FeatureTransform, normalise_category
from model_store.serving import NumpyTower, UserTower, tower_from_npz

__all__ = ["CACHE_KEYS", "BadVector", "CacheObserver", "ModelRecommender", "ModelState"]

log = get_logger(__name__)

MAX_K = 1000
POPULAR_KEPT = 1000
CACHE_KEYS = 10_000  # default: user-feature keys (and product codes) whose lists a version keeps
CACHE_MAX_DEPTH = 200  # items kept per cached list
CACHE_FILL_DEPTH = 32  # a miss fetches at least this deep, so the key's next, longer ask still hits
DEFAULT_EF_SEARCH = 100  # the width of a version whose row records none (loaded before the loader chose it)
_TABLE = re.compile(r"^(item|user)_emb__[a-z0-9_]{1,48}$")
_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class BadVector(UserError):
    """A query vector of the wrong dimension or with non-finite values."""


FeatureKey = tuple[str | None, str | None, float | None]
CacheKey = FeatureKey | int
"""A request's candidate list depends on its feature tuple, or (hybrid versions) on the customer."""
CacheObserver = Callable[[str, int, int], None]
"""Called once per batch with a cache's name (``candidates``, ``neighbours``), its hits and misses."""
_KEY_POSITION = {"city": 0, "country": 1, "creditLimit": 2}


def feature_key(features: UserFeatures) -> FeatureKey:
    """The normalised tuple the user tower sees: equal keys give equal embeddings."""
    credit = features.credit_limit
    if credit is not None and not math.isfinite(float(credit)):
        credit = None
    return (
        normalise_category(features.city),
        normalise_category(features.country),
        None if credit is None else float(credit),
    )


@dataclass(frozen=True, slots=True)
class ModelState:
    """Everything one version needs to answer, immutable; swapped as a whole on refresh."""

    version: str
    item_table: str
    user_table: str
    dimension: int
    user_transform: FeatureTransform
    user_tower: UserTower
    popular: tuple[ScoredItem, ...]
    # this version's answers, reused while it is active (its tables never change once loaded)
    candidates: PrefixCache[CacheKey, ScoredItem]
    neighbours: PrefixCache[str, ScoredItem]
    kind: str = "features"
    known_customers: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ef_search: int = DEFAULT_EF_SEARCH  # the width the loader chose for this version's catalog

    def knows(self, customer_number: int | None) -> bool:
        """Whether this (hybrid) version has the customer's own vector (sorted ``known_customers``)."""
        if customer_number is None or not self.known_customers.size:
            return False
        at = int(np.searchsorted(self.known_customers, customer_number))
        return at < self.known_customers.size and int(self.known_customers[at]) == customer_number

    def _rows(self, keys: Sequence[FeatureKey]) -> list[tuple[Any, ...]]:
        """Keys (city, country, credit limit) in the column order of the fitted parameters."""
        spec = self.user_transform.spec
        order = [_KEY_POSITION[c] for c in (*spec.categorical, *spec.numeric)]
        return [tuple(key[i] for i in order) for key in keys]

    def embed(self, keys: Sequence[FeatureKey]) -> npt.NDArray[np.float32]:
        rows = self.user_transform.sparse_rows(self._rows(keys))
        return self.user_tower.embed(self.user_transform.densify(rows))

    def embed_known(
        self, keys: Sequence[FeatureKey]
    ) -> tuple[npt.NDArray[np.float32], list[bool], float, float]:
        """Embeddings, whether the model knows anything of each user (a known category or a credit
        limit; a user it knows nothing of gets the popular items instead), and the seconds spent
        encoding features and running the tower."""
        started = time.perf_counter()
        rows = self.user_transform.sparse_rows(self._rows(keys))
        any_category: list[bool] = np.any(rows.indices >= 0, axis=1).tolist()
        known = [hit or key[2] is not None for hit, key in zip(any_category, keys, strict=True)]
        dense = self.user_transform.densify(rows)
        encoded = time.perf_counter()
        vectors = self.user_tower.embed(dense)
        return vectors, known, encoded - started, time.perf_counter() - encoded


def _table(name: str) -> str:
    if not _TABLE.match(name):
        raise DatabaseUnavailable(f"model_versions names an unexpected table {name!r}")
    return name


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _build_state(
    row: asyncpg.Record, popular: list[asyncpg.Record], cache_keys: int, known: list[int]
) -> ModelState:
    """CPU part of loading a version (reading the user tower's arrays): runs in the executor."""
    transform = FeatureTransform.from_json(_json(row["user_features"]))
    unknown = {*transform.spec.categorical, *transform.spec.numeric} - set(_KEY_POSITION)
    if unknown:
        raise DatabaseUnavailable(
            f"version {row['version']}: the user features {sorted(unknown)} are unknown"
        )
    tower = _user_tower(row)
    if tower.in_dim != transform.dim:
        raise ArtifactError(
            f"version {row['version']}: the user tower reads {tower.in_dim} inputs, "
            f"the feature parameters give {transform.dim}"
        )
    return ModelState(
        version=str(row["version"]),
        item_table=_table(str(row["item_table"])),
        user_table=_table(str(row["user_table"])),
        dimension=int(row["dimension"]),
        user_transform=transform,
        user_tower=tower,
        popular=tuple(ScoredItem(str(p["id"]), float(p["score"])) for p in popular),
        candidates=PrefixCache(cache_keys, CACHE_MAX_DEPTH),
        neighbours=PrefixCache(cache_keys, CACHE_MAX_DEPTH),
        kind=str(row["kind"] or "features"),
        known_customers=np.unique(np.asarray(known, dtype=np.int64)),
        ef_search=DEFAULT_EF_SEARCH if row["ef_search"] is None else int(row["ef_search"]),
    )


def _user_tower(row: asyncpg.Record) -> NumpyTower:
    """The version's user tower from its arrays (``user_tower``, an ``.npz``); a version loaded
    before they were stored has none: its torch state_dict is read instead (torch imported here)."""
    if row["user_tower"] is not None:
        try:
            return tower_from_npz(bytes(row["user_tower"]))
        except ArtifactError as exc:
            raise ArtifactError(f"version {row['version']}: {exc}") from exc
    log.info("version %s has no array weights; loading torch", row["version"])
    from model_store.model import load_state_dict, numpy_tower

    return numpy_tower(load_state_dict(bytes(row["weights"])), "user_tower")


def _batch_sql(item_table: str, user_table: str) -> str:
    """Per query: the customer's stored vector when ``cust`` names a row of the version's user
    table (a hybrid version's known customer), the given vector otherwise; with ``$9`` the
    customer's ``bought`` items are filtered inside the scan (strict order keeps it exact)."""
    return f"""
WITH cfg AS MATERIALIZED (
    SELECT set_config('hnsw.ef_search', $4::text, true) AS ef,
           set_config('hnsw.iterative_scan', 'strict_order', true) AS scan
)
SELECT 0 AS kind, q.ord, NULL::text AS code, t.ids, t.scores, u.id IS NOT NULL AS known
FROM cfg, unnest($1::int[], $2::vector[], $3::int[], $8::int[]) AS q(ord, vec, lim, cust)
LEFT JOIN {user_table} u ON u.id = q.cust
CROSS JOIN LATERAL (
    SELECT array_agg(s.id ORDER BY s.dist, s.id) AS ids, array_agg(-s.dist ORDER BY s.dist, s.id) AS scores
    FROM (
        SELECT e.id, e.embedding <#> COALESCE(u.embedding, q.vec) AS dist
        FROM {item_table} e
        WHERE cfg.ef IS NOT NULL AND cfg.scan IS NOT NULL
          AND COALESCE(u.embedding, q.vec) IS NOT NULL
          AND NOT ($9::bool AND u.bought IS NOT NULL AND e.id = ANY(u.bought))
        ORDER BY e.embedding <#> COALESCE(u.embedding, q.vec)
        LIMIT q.lim
    ) s
) t
UNION ALL
SELECT 1, NULL, n.id, n.neighbour_ids[1:$7], n.scores[1:$7], NULL
FROM item_neighbours n
WHERE n.version = $5 AND n.id = ANY($6::text[])
"""


class ModelRecommender:
    """The active model version answering through pgvector. Build it with :meth:`open`."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        state: ModelState,
        executor: ThreadPoolExecutor,
        ef_search: int | None,
        *,
        cache_keys: int = CACHE_KEYS,
        observe: CacheObserver | None = None,
        exclude_bought: bool = True,
    ) -> None:
        self._pool = pool
        self._state = state
        self._executor = executor
        self._ef_search = ef_search
        self._exclude_bought = exclude_bought
        self._cache_keys = cache_keys
        self._observe = observe
        self._refresh_lock = asyncio.Lock()

    # --- lifecycle --------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        pool: asyncpg.Pool[Any],
        *,
        ef_search: int | None = None,
        cache_keys: int = CACHE_KEYS,
        observe: CacheObserver | None = None,
        exclude_bought: bool = True,
    ) -> ModelRecommender:
        """The recommender of the active version. Raises ``ModelNotReady`` when none is active.

        ``ef_search``: the HNSW search width of every scan; None (the default) = the one the loader
        recorded for the active version (``DEFAULT_EF_SEARCH`` when it recorded none).
        ``cache_keys``: how many user-feature keys or known customers (and, separately, product
        codes) keep their candidate (neighbour) lists per version, least recently used first out;
        0 = no cache. ``observe`` hears each batch's cache hits and misses (the consumer's metrics).
        ``exclude_bought``: leave the items a hybrid version knows a customer bought out of that
        customer's model answers (the default; cart and browsed items are always left out)."""
        if cache_keys < 0:
            raise ValueError("cache_keys must be >= 0")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-model")
        try:
            state = await cls._load_active(pool, executor, cache_keys)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        if state is None:
            executor.shutdown(wait=False)
            raise ModelNotReady("no model version is active; run `recsys train` and `recsys load-vectors`")
        ef = None if ef_search is None else max(10, min(ef_search, 1000))
        log.info(
            "model version %s ready (%s, ef_search %d)",
            state.version,
            state.item_table,
            ef or state.ef_search,
        )
        return cls(
            pool, state, executor, ef, cache_keys=cache_keys, observe=observe, exclude_bought=exclude_bought
        )

    @staticmethod
    async def _load_active(
        pool: asyncpg.Pool[Any], executor: ThreadPoolExecutor, cache_keys: int, skip: str | None = None
    ) -> ModelState | None:
        try:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT version, item_table, user_table, dimension, user_features, user_tower, "
                    "CASE WHEN user_tower IS NULL THEN weights END AS weights, "
                    "ef_search, manifest->'model'->>'kind' AS kind FROM model_versions WHERE active"
                )
                if row is None or row["version"] == skip:
                    return None
                popular = await conn.fetch(
                    "SELECT id, score FROM popular_items WHERE version = $1 ORDER BY rank LIMIT $2",
                    row["version"],
                    POPULAR_KEPT,
                )
                known: list[int] = []
                if row["kind"] == "hybrid":  # the customers whose own vectors the version holds
                    known = [
                        int(r["id"])
                        for r in await conn.fetch(f"SELECT id FROM {_table(str(row['user_table']))}")
                    ]
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
            raise ModelNotReady("the model tables do not exist; run `recsys migrate` first") from exc
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(f"reading the active model version failed: {exc}") from exc
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, _build_state, row, popular, cache_keys, known)

    @property
    def model_version(self) -> str:
        return self._state.version

    @property
    def ef_search(self) -> int:
        """The ``hnsw.ef_search`` the scans run with: the explicit one, else the active version's."""
        return self._ef_search or self._state.ef_search

    async def refresh(self) -> bool:
        """Switch to the active version if it changed (one cheap query when it did not)."""
        async with self._refresh_lock:
            current = self._state.version
            try:
                active = await self._pool.fetchval("SELECT version FROM model_versions WHERE active")
            except _DB_ERRORS as exc:
                raise DatabaseUnavailable(f"checking the active model version failed: {exc}") from exc
            if active is None or active == current:
                return False
            state = await self._load_active(self._pool, self._executor, self._cache_keys, skip=current)
            if state is None:
                return False
            self._state = state  # one reference swap: the next batch runs on the new version
            log.info("switched model version %s -> %s", current, state.version)
            return True

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- the batch path ---------------------------------------------------------------------------
    async def recommend_batch(
        self, requests: Sequence[RecommendRequest], timings: dict[str, float] | None = None
    ) -> list[Recommendation]:
        """See ``core.ports.Recommender``. ``timings``, when given, accumulates the seconds
        spent in ``features``, ``model``, ``database`` and ``ranking`` (for benchmarks)."""
        if not requests:
            return []
        try:
            return await self._recommend(self._state, requests, timings)
        except asyncpg.UndefinedTableError:
            # the version's tables were dropped under us (a newer version was loaded meanwhile)
            if await self.refresh():
                return await self._recommend(self._state, requests, timings)
            raise DatabaseUnavailable("the active version's vector table is missing") from None

    async def recommend_one(
        self, request: RecommendRequest, timings: dict[str, float] | None = None
    ) -> Recommendation:
        """The one-by-one path (one forward, one round trip per request): the batch path's reference."""
        return (await self.recommend_batch([request], timings))[0]

    async def _recommend(
        self,
        state: ModelState,
        requests: Sequence[RecommendRequest],
        timings: dict[str, float] | None,
    ) -> list[Recommendation]:
        started = time.perf_counter()
        keys: dict[CacheKey, int] = {}
        slot_features: list[FeatureKey] = []
        slot_customer: list[int | None] = []
        limits: list[int] = []
        per_request: list[tuple[int, list[str], set[str], int]] = []
        codes: dict[str, None] = {}
        for req in requests:
            features = feature_key(req.features)
            # a customer the (hybrid) version knows is answered from their own vector
            customer = req.customer_number
            key: CacheKey = int(customer) if customer is not None and state.knows(customer) else features
            slot = keys.setdefault(key, len(keys))
            ordered = browse_order(req.browse_history)
            banned = set(ordered)
            k = max(0, min(int(req.k), MAX_K))
            limit = k + len(banned) if k else 0
            if slot == len(limits):
                limits.append(limit)
                slot_features.append(features)
                slot_customer.append(key if isinstance(key, int) else None)
            else:
                limits[slot] = max(limits[slot], limit)
            codes.update(dict.fromkeys(ordered))
            per_request.append((slot, ordered, banned, k))
        depth = max((k + len(banned) for _, _, banned, k in per_request), default=0)

        # what this version already answered: a candidate list per key, a neighbour list per code
        key_list = list(keys)
        candidates: dict[int, tuple[ScoredItem, ...]] = {}
        missing: list[int] = []
        for slot, key in enumerate(key_list):
            cached = state.candidates.get(key, limits[slot]) if limits[slot] else ()
            if cached is None:
                missing.append(slot)
            else:
                candidates[slot] = cached
        neighbours: dict[str, tuple[ScoredItem, ...]] = {}
        codes_missing: list[str] = []
        for code in codes:
            cached = state.neighbours.get(code, depth)
            if cached is None:
                codes_missing.append(code)
            else:
                neighbours[code] = cached
        prepared = time.perf_counter()

        t_features = t_model = 0.0
        ords: list[int] = []
        fetch_limits: list[int] = []
        customers: list[int | None] = []
        fetched_depth: dict[int, int] = {}
        vectors: npt.NDArray[np.float32] = np.zeros((0, state.dimension), dtype=np.float32)
        if missing:
            loop = asyncio.get_running_loop()
            # known customers' features too: the fallback if their row has gone (recsys forget)
            vectors, known, t_features, t_model = await loop.run_in_executor(
                self._executor, state.embed_known, [slot_features[slot] for slot in missing]
            )
            rows_known: list[int] = []
            fill = CACHE_FILL_DEPTH if state.candidates.enabled else 0
            for i, (slot, knows) in enumerate(zip(missing, known, strict=True)):
                if knows or slot_customer[slot] is not None:
                    customers.append(slot_customer[slot])
                    rows_known.append(i)
                    ords.append(slot)
                    fetch_limits.append(max(limits[slot], fill))
                    fetched_depth[slot] = fetch_limits[-1]
                else:  # the model knows nothing of this user: the popular items answer instead
                    candidates[slot] = ()
                    state.candidates.put(key_list[slot], (), limits[slot])
            vectors = vectors[rows_known]
        queried = time.perf_counter()
        if ords or codes_missing:
            fill = CACHE_FILL_DEPTH if state.neighbours.enabled else 0
            code_depth = max(depth, fill)
            rows = await self._fetch(
                state, vectors, fetch_limits, codes_missing, code_depth, ords=ords, customers=customers
            )
            fetched = time.perf_counter()
            for row in rows:
                items = tuple(
                    ScoredItem(str(i), float(s))
                    for i, s in zip(row["ids"] or (), row["scores"] or (), strict=True)
                )
                if row["kind"] == 0:
                    slot = int(row["ord"])
                    candidates[slot] = items[: limits[slot]]
                    state.candidates.put(key_list[slot], items, fetched_depth[slot])
                else:
                    neighbours[str(row["code"])] = items[:depth]
                    state.neighbours.put(str(row["code"]), items, code_depth)
            for code in codes_missing:
                if code not in neighbours:  # no such product in this version's catalog
                    neighbours[code] = ()
                    state.neighbours.put(code, (), code_depth)
        else:
            fetched = queried

        out: list[Recommendation] = []
        for slot, ordered, banned, k in per_request:
            recommended = exclude(candidates.get(slot, ()), banned, k)
            similar = merge_similar([(code, neighbours.get(code, ())) for code in ordered], banned, k)
            fallback = not recommended and k > 0
            if fallback:
                recommended = exclude(state.popular, banned, k)
            out.append(
                Recommendation(
                    recommended_items=recommended,
                    similar_items=similar,
                    model_version=state.version,
                    source=Source.POPULAR if fallback else Source.MODEL,
                    fallback=fallback,
                )
            )
        if self._observe is not None and state.candidates.enabled:
            looked_up = sum(1 for limit in limits if limit)
            self._observe("candidates", looked_up - len(missing), len(missing))
            self._observe("neighbours", len(codes) - len(codes_missing), len(codes_missing))
        if timings is not None:
            done = time.perf_counter()
            for name, seconds in (
                ("features", (prepared - started) + t_features),
                ("model", t_model),
                ("database", fetched - queried),
                ("ranking", done - fetched),
            ):
                timings[name] = timings.get(name, 0.0) + seconds
        return out

    async def _fetch(
        self,
        state: ModelState,
        vectors: npt.NDArray[np.float32] | Sequence[npt.NDArray[np.float32] | None],
        limits: list[int],
        codes: list[str],
        depth: int = 0,
        *,
        ords: list[int] | None = None,
        customers: Sequence[int | None] | None = None,
    ) -> list[asyncpg.Record]:
        """One statement: a top-``limits[i]`` per vector (rows numbered by ``ords``, default
        0, 1, ...; the vector of ``customers[i]`` when the version holds one, and then without
        the items they bought unless that filter is off), and the first ``depth`` neighbours of
        each code. ``k + len(banned)`` neighbours per list always suffice for ``merge_similar``
        (each list alone holds ``k`` allowed items), so any depth above that gives the same merged
        answer."""
        try:
            rows: list[asyncpg.Record] = await self._pool.fetch(
                _batch_sql(state.item_table, state.user_table),
                list(range(len(limits))) if ords is None else ords,
                [None if v is None else Vector(v) for v in vectors],
                limits,
                str(self._ef_search or state.ef_search),
                state.version,
                codes,
                depth,
                [None] * len(limits) if customers is None else list(customers),
                self._exclude_bought,
                timeout=30.0,
            )
        except asyncpg.UndefinedTableError:
            raise
        except asyncpg.DataError as exc:  # SQLSTATE class 22: the batch's data, not the database
            raise DataRejected(f"PostgreSQL refused the query's data: {exc}") from exc
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(f"the vector query failed: {exc}") from exc
        return rows

    # --- single questions (the API) ---------------------------------------------------------------
    async def similar_items(self, product_code: str, k: int) -> list[ScoredItem]:
        k = max(0, min(int(k), MAX_K))
        for attempt in range(2):
            state = self._state
            try:
                row = await self._pool.fetchrow(
                    "SELECT neighbour_ids, scores FROM item_neighbours WHERE version = $1 AND id = $2",
                    state.version,
                    product_code,
                )
            except asyncpg.DataError as exc:  # text the database cannot hold (NUL): the caller's input
                raise DataRejected(f"the product code cannot be looked up: {exc}") from exc
            except _DB_ERRORS as exc:
                raise DatabaseUnavailable(f"reading similar items failed: {exc}") from exc
            # not found: an unknown code, or our version was dropped after newer loads -> refresh once
            if row is not None or attempt == 1 or not await self.refresh():
                break
        if row is None:
            raise NotFoundError(f"unknown product code {product_code!r} in model version {state.version}")
        try:
            stored = [
                ScoredItem(str(i), float(s)) for i, s in zip(row["neighbour_ids"], row["scores"], strict=True)
            ]
            if k <= len(stored) or len(stored) == 0:
                return stored[:k]
            # more than were precomputed: ask the index
            found = await self._pool.fetch(
                f"""SELECT e.id, -(e.embedding <#> q.embedding) AS score
                    FROM {state.item_table} e, (SELECT embedding FROM {state.item_table} WHERE id = $1) q
                    WHERE e.id <> $1
                    ORDER BY e.embedding <#> q.embedding, e.id LIMIT $2""",
                product_code,
                k,
            )
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(f"reading similar items failed: {exc}") from exc
        return [ScoredItem(str(r["id"]), float(r["score"])) for r in found]

    async def popular_items(self, k: int) -> list[ScoredItem]:
        return list(self._state.popular[: max(0, int(k))])

    async def user_embeddings(self, features: Sequence[UserFeatures]) -> list[list[float]]:
        state = self._state
        if not features:
            return []
        keys = [feature_key(f) for f in features]
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, state.embed, keys)
        return [[float(x) for x in row] for row in vectors]

    async def items_from_vector(self, vector: Sequence[float], k: int) -> list[ScoredItem]:
        state = self._state
        try:
            query = np.asarray([float(x) for x in vector], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise BadVector(f"the vector must be a list of numbers: {exc}") from exc
        if query.shape != (state.dimension,):
            raise BadVector(f"the vector must have {state.dimension} numbers, got {query.size}")
        if not np.isfinite(query).all():
            raise BadVector("the vector holds non-finite values")
        peak = float(np.abs(query).max())
        if peak == 0.0:
            raise BadVector("the vector is all zeros")
        # scaled to a largest component of 1 first: the norm of 1e300s (or 1e-300s) neither
        # overflows nor underflows, and the direction, all that counts, is unchanged
        query = query / peak
        unit = (query / np.linalg.norm(query)).astype(np.float32)  # cosine scores
        k = max(0, min(int(k), MAX_K))
        rows = await self._fetch(state, unit.reshape(1, -1), [k], [])
        for row in rows:
            if row["kind"] == 0:
                return [
                    ScoredItem(str(i), float(s))
                    for i, s in zip(row["ids"] or (), row["scores"] or (), strict=True)
                ]
        return []

    async def recommend_customer(self, customer_number: int, k: int) -> Recommendation | None:
        """Model recommendations from a known customer's stored vector (same version), without the
        items they bought (unless that filter is off); None when the version has no vector for them."""
        state = self._state
        if state.kind == "hybrid" and not state.knows(customer_number):
            return None  # the version holds no vector for them: nothing to ask the database
        k = max(0, min(int(k), MAX_K))
        rows = await self._fetch(state, [None], [k], [], customers=[int(customer_number)])
        row = next((r for r in rows if r["kind"] == 0), None)
        if row is None or not row["known"]:
            return None
        items = tuple(
            ScoredItem(str(i), float(s)) for i, s in zip(row["ids"] or (), row["scores"] or (), strict=True)
        )
        return Recommendation(items, SimilarItems(None, ()), state.version, Source.MODEL)
