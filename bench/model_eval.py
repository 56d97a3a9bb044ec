"""Model quality on held-out purchases: the hybrid two-tower, measured through the product, against
popularity and the ``implicit`` library's ALS and item-item kNN on the same split.

**The real shop** (the benchmark that counts): the public classicmodels dump
(``../shared/data/classicmodels.sql`` beside the checkout, or ``RECSYS_CLASSICMODELS_SQL``) is loaded
into a fresh MariaDB database (``RECSYS_BENCH_MYSQL_URL``, default ``mysql+pymysql://root@127.0.0.1:3306``).
A customer's purchases are the distinct products of their ``orders`` / ``orderdetails``. Held out
*before the product sees anything*, three protocols:

- ``leave-20%-out``: 20 % of each customer's purchases (seeded);
- ``cold start``: 20 % of the purchasing customers, whole (the rest of them fully known);
- ``temporal``: every purchase first made on or after the date that leaves 80 % of the order lines
  before it (``orders.orderDate``); a customer with no earlier purchase is a cold-start customer.

The shop's ``ratings`` table then holds the remaining purchases with ratings drawn uniformly from
1-5 (made up, so they carry no signal: what is learned is who bought what), and the product runs as
a user runs it: ``recsys etl``, ``recsys train``, ``recsys load-vectors``, ``recsys serve`` (a child
process on a free port). A known customer's answer is ``GET /recommendations/{customer}?limit=10``
(``source`` must be ``model``); a cold-start customer's is ``POST /user_embeddings`` with their
profile then ``POST /items_from_user?limit=10`` (the stream path's features vector: the API has no
profile of a customer it does not know). The cold-start split is run twice per seed, the second time
with ``RECSYS_TRAIN__COLD_PRIOR=true`` (the opt-in popularity prior in new customers' vectors,
``model_store.training``), so its effect is measured side by side. The product leaves the
customer's training purchases out (its already-bought filter); the baselines rank every item but
those, on exactly the same training pairs:

- popularity: purchase count in the training pairs;
- ``implicit.als.AlternatingLeastSquares(factors=32, regularization=0.05, iterations=30, alpha=1.0)``
  on the binary customer x product matrix (``random_state`` = the seed, one thread);
- ``implicit.nearest_neighbours.CosineRecommender(K=20)``: item-item cosine kNN on the same matrix.

Metrics per customer with at least one held-out purchase, then averaged: NDCG@10 (binary relevance),
hit@10, recall@10 (over min(10, held out)), and catalog coverage@10 (distinct items shown / items).

**Browsing and the user vector** (issue 18's question): with the same trained version, half of each
known customer's held-out purchases play the session's browsed items and the other half the targets;
the customer's vector alone is compared with ``normalise(u + a * mean(browsed item vectors))`` for a
few ``a``, and with random browsed items as the control.

**The generated shop** (``recsys seed``, scales 1 and 10): the trainer's own held-out metrics (the
manifest's leave-20%-out and cold-start figures) against the same baselines on the same split
(``model_store.training.split_pairs``), and the training time.

``implicit`` is a development dependency (``requirements-dev.lock``), never in the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench._harness import Figure, Report, bench_stack, drop_database, prepared_model

TOP_K = 10
ALS_SETTINGS = {"factors": 32, "regularization": 0.05, "iterations": 30, "alpha": 1.0}
KNN_K = 20
HELD_OUT = 0.2
BLEND = (0.25, 0.5, 1.0)
MYSQL_URL = os.environ.get("RECSYS_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")


def _dump() -> Path | None:
    env = os.environ.get("RECSYS_CLASSICMODELS_SQL")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "classicmodels.sql")
    return next((p for p in candidates if p.is_file()), None)


# ------------------------------------------------------------------------------------------ metrics
@dataclass
class Scores:
    """Per-customer ranking results of one recommender on one split."""

    ndcg: list[float] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)

    def add(self, ranked: Sequence[str], relevant: set[str]) -> None:
        top = list(ranked)[:TOP_K]
        discounts = 1.0 / np.log2(np.arange(2, TOP_K + 2))
        gains = np.array([1.0 if item in relevant else 0.0 for item in top])
        ideal = float(discounts[: min(len(relevant), TOP_K)].sum())
        self.ndcg.append(float((gains * discounts[: len(gains)]).sum()) / ideal)
        self.hit.append(float(gains.any()))
        self.recall.append(float(gains.sum()) / min(len(relevant), TOP_K))
        self.shown.update(top)

    def summary(self, n_items: int) -> dict[str, float]:
        return {
            "ndcg": float(np.mean(self.ndcg)) if self.ndcg else float("nan"),
            "hit": float(np.mean(self.hit)) if self.hit else float("nan"),
            "recall": float(np.mean(self.recall)) if self.recall else float("nan"),
            "coverage": len(self.shown) / n_items,
            "customers": float(len(self.ndcg)),
        }


def _top(scores: npt.NDArray[np.float64], items: Sequence[str], banned: set[str]) -> list[str]:
    out = []
    for j in np.argsort(-scores, kind="stable"):
        if items[int(j)] not in banned:
            out.append(items[int(j)])
            if len(out) == TOP_K:
                break
    return out


def library_baselines(
    train: dict[int, set[str]], test: dict[int, set[str]], items: Sequence[str], seed: int
) -> dict[str, dict[str, float]]:
    """Popularity, ALS and item-kNN on the training pairs, scored on ``test`` (known customers)."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    customers = sorted(train)
    row = {c: r for r, c in enumerate(customers)}
    col = {p: j for j, p in enumerate(items)}
    pairs = [(row[c], col[p]) for c in customers for p in train[c] if p in col]
    matrix = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), ([r for r, _ in pairs], [j for _, j in pairs])),
        shape=(len(customers), len(items)),
    )
    popularity = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float64)
    with threadpool_limits(1):
        als = AlternatingLeastSquares(**ALS_SETTINGS, random_state=seed)
        als.fit(matrix, show_progress=False)
        knn = CosineRecommender(K=KNN_K)
        knn.fit(matrix, show_progress=False)
    user_f, item_f = np.asarray(als.user_factors), np.asarray(als.item_factors)
    similarity = knn.similarity.toarray()
    out: dict[str, Scores] = {"popularity": Scores(), "ALS": Scores(), "item-kNN": Scores()}
    for customer, relevant in test.items():
        if not relevant or customer not in row:
            continue
        banned = train[customer]
        r = row[customer]
        out["popularity"].add(_top(popularity, items, banned), relevant)
        out["ALS"].add(_top(item_f @ user_f[r], items, banned), relevant)
        history = matrix[r].toarray().ravel()
        out["item-kNN"].add(_top(history @ similarity, items, banned), relevant)
    return {name: s.summary(len(items)) for name, s in out.items()}


def popularity_scores(
    train: dict[int, set[str]], test: dict[int, set[str]], items: Sequence[str]
) -> dict[str, float]:
    counts = {p: 0 for p in items}
    for bought in train.values():
        for p in bought:
            counts[p] = counts.get(p, 0) + 1
    ranking = np.array([counts[p] for p in items], dtype=np.float64)
    scores = Scores()
    for customer, relevant in test.items():
        if relevant:
            scores.add(_top(ranking, items, train.get(customer, set())), relevant)
    return scores.summary(len(items))


# ------------------------------------------------------------------------------------ the real shop
@dataclass
class Shop:
    url: str
    drop: Any
    purchases: dict[int, dict[str, date]]  # customer -> product -> first order date
    profiles: dict[int, tuple[str | None, str | None, float | None]]
    items: list[str]
    order_lines: list[date]


def _pymysql(url: str) -> Any:
    import pymysql
    import sqlalchemy as sa

    u = sa.make_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.database,
        autocommit=True,
    )


@contextlib.contextmanager
def real_shop(dump: Path) -> Iterator[Shop]:
    """The dump in a fresh MariaDB database (dropped afterwards)."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        raise RuntimeError("no mariadb/mysql client to load the classicmodels dump")
    import sqlalchemy as sa

    name = f"bench_model_eval_{uuid.uuid4().hex[:8]}"
    admin = sa.make_url(MYSQL_URL)
    cmd = [
        client,
        f"-u{admin.username or 'root'}",
        f"-h{admin.host or '127.0.0.1'}",
        f"-P{admin.port or 3306}",
    ]
    if admin.password:
        cmd.append(f"-p{admin.password}")
    sql = dump.read_text(encoding="utf-8", errors="replace").replace("`classicmodels`", f"`{name}`")
    subprocess.run(cmd, input=sql, text=True, check=True, capture_output=True, timeout=300)
    url = admin.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        conn = _pymysql(MYSQL_URL)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    try:
        conn = _pymysql(url)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT o.customerNumber, d.productCode, MIN(o.orderDate) FROM orders o "
                "JOIN orderdetails d ON d.orderNumber = o.orderNumber GROUP BY 1, 2"
            )
            purchases: dict[int, dict[str, date]] = {}
            for customer, code, day in cur.fetchall():
                purchases.setdefault(int(customer), {})[str(code)] = day
            cur.execute("SELECT customerNumber, city, country, creditLimit FROM customers")
            profiles = {
                int(c): (city, country, None if limit is None else float(limit))
                for c, city, country, limit in cur.fetchall()
            }
            cur.execute("SELECT productCode FROM products ORDER BY productCode")
            items = [str(r[0]) for r in cur.fetchall()]
            cur.execute(
                "SELECT o.orderDate FROM orders o JOIN orderdetails d ON d.orderNumber = o.orderNumber"
            )
            lines = sorted(r[0] for r in cur.fetchall())
        conn.close()
        yield Shop(url, drop, purchases, profiles, items, lines)
    finally:
        drop()


@dataclass
class Split:
    name: str
    train: dict[int, set[str]]  # what the shop's ratings table holds
    known_test: dict[int, set[str]]  # customers the product knows
    cold_test: dict[int, set[str]]  # customers with no training purchase


def leave_out_split(shop: Shop, seed: int) -> Split:
    rng = np.random.default_rng([seed, 20])
    train: dict[int, set[str]] = {}
    test: dict[int, set[str]] = {}
    for customer in sorted(shop.purchases):
        bought = sorted(shop.purchases[customer])
        rng.shuffle(bought)
        n = round(len(bought) * HELD_OUT)
        test[customer] = set(bought[:n])
        train[customer] = set(bought[n:])
    return Split("leave-20%-out", train, test, {})


def cold_split(shop: Shop, seed: int) -> Split:
    rng = np.random.default_rng([seed, 21])
    customers = sorted(shop.purchases)
    cold = set(rng.permutation(customers)[: round(len(customers) * HELD_OUT)].tolist())
    train = {c: set(shop.purchases[c]) for c in customers if c not in cold}
    return Split("cold start", train, {}, {c: set(shop.purchases[c]) for c in sorted(cold)})


def temporal_split(shop: Shop) -> tuple[Split, date]:
    cutoff = shop.order_lines[int(len(shop.order_lines) * (1 - HELD_OUT))]
    train: dict[int, set[str]] = {}
    later: dict[int, set[str]] = {}
    for customer, bought in shop.purchases.items():
        for code, first in bought.items():
            (train if first < cutoff else later).setdefault(customer, set()).add(code)
    known = {c: items for c, items in later.items() if c in train}
    cold = {c: items for c, items in later.items() if c not in train}
    return Split("temporal", train, known, cold), cutoff


def _write_ratings(shop: Shop, train: dict[int, set[str]], seed: int) -> None:
    """The shop's ``ratings`` table: the training purchases, each with a uniformly random rating."""
    rng = np.random.default_rng([seed, 22])
    rows = [(c, p, int(rng.integers(1, 6))) for c in sorted(train) for p in sorted(train[c])]
    conn = _pymysql(shop.url)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS ratings")
        cur.execute(
            "CREATE TABLE ratings (customerNumber INT NOT NULL, productCode VARCHAR(15) NOT NULL, "
            "productRating SMALLINT NOT NULL, PRIMARY KEY (customerNumber, productCode))"
        )
        cur.executemany("INSERT INTO ratings VALUES (%s, %s, %s)", rows)
    conn.close()


def _recsys(*args: str) -> str:
    """``recsys ARGS`` in this process (the CLI's own code path); its stdout, exit 0 or raise."""
    from recsys.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    if code != 0:
        raise RuntimeError(f"recsys {' '.join(args)} exited {code}: {out.getvalue()[-500:]}")
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(database_url: str) -> Iterator[str]:
    """``recsys serve`` as a child process on a free port; its base URL once ``/readyz`` answers."""
    port = _free_port()
    exe = Path(sys.executable).with_name("recsys")
    root = str(Path(__file__).resolve().parents[1])  # the child runs this checkout's code too
    env = {**os.environ, "RECSYS_LOG_LEVEL": "WARNING", "PYTHONPATH": root}
    env.pop("RECSYS_API_TOKEN", None)
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--database-url", database_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr is not None else ""
                    raise RuntimeError(f"recsys serve exited: {err[-500:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("recsys serve did not become ready in 120 s") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@dataclass
class ProductRun:
    known: dict[str, float]
    cold: dict[str, float]
    manifest: dict[str, Any]
    bundle: Any  # the trained version, loaded and verified
    sources: dict[str, int]
    train_seconds: float


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_product(
    shop: Shop, split: Split, seed: int, server_url: str, train_env: dict[str, str] | None = None
) -> ProductRun:
    """etl -> train -> load-vectors -> serve on ``split``'s training purchases; the API's answers scored.
    ``train_env``: settings for ``recsys train`` (``RECSYS_TRAIN__*``)."""
    from infra.objectstore import open_store
    from infra.pg import new_database
    from model_store.artifacts import load_bundle

    _write_ratings(shop, split.train, seed)
    work = Path(tempfile.mkdtemp(prefix="bench-model-eval-"))
    database = asyncio.run(new_database(server_url, "bench_model_eval"))
    try:
        lake, artifacts = str(work / "lake"), str(work / "artifacts")
        _recsys("etl", "--source-url", shop.url, "--lake", lake)
        started = time.perf_counter()
        with _environment(train_env or {}):
            summary = json.loads(
                _recsys("train", "--lake", lake, "--artifacts", artifacts, "--json", "--seed", str(seed))
            )
        train_seconds = time.perf_counter() - started
        _recsys("load-vectors", "--artifacts", artifacts, "--database-url", database)
        manifest = json.loads((work / "artifacts" / summary["version"] / "manifest.json").read_text())
        known, cold = Scores(), Scores()
        sources: dict[str, int] = {}
        with serve(database) as base:
            for customer, relevant in sorted(split.known_test.items()):
                if not relevant:
                    continue
                answer = _http("GET", f"{base}/recommendations/{customer}?limit={TOP_K}")
                sources[answer["source"]] = sources.get(answer["source"], 0) + 1
                ranked = [i["id"] for i in answer["recommended_items"]]
                # the filter on the product's side is the product's; check it held
                assert not set(ranked) & split.train.get(customer, set()), customer
                known.add(ranked, relevant)
            for customer, relevant in sorted(split.cold_test.items()):
                if not relevant:
                    continue
                city, country, limit = shop.profiles[customer]
                vector = _http(
                    "POST",
                    f"{base}/user_embeddings",
                    [{"city": city, "country": country, "creditlimit": limit}],
                )[0]
                items = _http("POST", f"{base}/items_from_user?limit={TOP_K}", vector)
                cold.add([i["id"] for i in items], relevant)
        return ProductRun(
            known.summary(len(shop.items)),
            cold.summary(len(shop.items)),
            manifest,
            load_bundle(open_store(artifacts), summary["version"]),
            sources,
            train_seconds,
        )
    finally:
        asyncio.run(drop_database(server_url, database))
        shutil.rmtree(work, ignore_errors=True)


def browse_blend(run: ProductRun, split: Split, seed: int) -> dict[str, dict[str, float]]:
    """Does moving the user vector toward the session's browsed items help? (module docstring)."""
    bundle = run.bundle
    items = bundle.item_ids
    vectors = bundle.item_vectors.astype(np.float64)
    position = {code: i for i, code in enumerate(items)}
    user = {u: bundle.user_vectors[i].astype(np.float64) for i, u in enumerate(bundle.user_ids)}
    rng = np.random.default_rng([seed, 23])
    results: dict[str, Scores] = {"vector alone": Scores()}
    for a in BLEND:
        results[f"blend a={a:g}, browsed = half the held-out"] = Scores()
        results[f"blend a={a:g}, browsed = random items"] = Scores()
    for customer, relevant in sorted(split.known_test.items()):
        held = sorted(relevant & set(position))
        if len(held) < 2 or customer not in user:
            continue
        rng.shuffle(held)
        browsed, target = held[: len(held) // 2], set(held[len(held) // 2 :])
        others = [p for p in items if p not in split.train.get(customer, set()) and p not in relevant]
        random_browsed = list(rng.choice(others, size=min(len(browsed), len(others)), replace=False))
        u = user[customer]
        for label, b in (("half the held-out", browsed), ("random items", random_browsed)):
            banned = split.train.get(customer, set()) | set(b)
            if label == "half the held-out":
                results["vector alone"].add(_top(vectors @ u, items, banned), target)
            mean = vectors[[position[p] for p in b]].mean(axis=0)
            for a in BLEND:
                q = u + a * mean
                q /= np.linalg.norm(q)
                results[f"blend a={a:g}, browsed = {label}"].add(_top(vectors @ q, items, banned), target)
    return {name: s.summary(len(items)) for name, s in results.items()}


def _real_report(quick: bool, server_url: str) -> Report | None:
    dump = _dump()
    if dump is None:
        print("  the classicmodels dump is not beside the checkout: the real-shop benchmark is skipped")
        return None
    seeds = (0,) if quick else (0, 1, 2)
    report = Report("model_eval_real", scale={"data": "classicmodels", "seeds": list(seeds), "k": TOP_K})
    with real_shop(dump) as shop:
        runs: dict[str, dict[str, list[float]]] = {}

        def put(name: str, values: dict[str, float]) -> None:
            for metric, value in values.items():
                runs.setdefault(name, {}).setdefault(metric, []).append(value)

        blend: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            split = leave_out_split(shop, seed)
            run = run_product(shop, split, seed, server_url)
            put("leave-20%-out: hybrid (API)", run.known)
            for name, values in library_baselines(split.train, split.known_test, shop.items, seed).items():
                put(f"leave-20%-out: {name}", values)
            put("leave-20%-out: train seconds", {"seconds": run.train_seconds})
            put(
                "leave-20%-out: API answers from the model",
                {"share": run.sources.get("model", 0) / max(1, sum(run.sources.values()))},
            )
            for name, values in browse_blend(run, split, seed).items():
                for metric, value in values.items():
                    blend.setdefault(name, {}).setdefault(metric, []).append(value)
            split = cold_split(shop, seed)
            run = run_product(shop, split, seed, server_url)
            put("cold start: hybrid (API, features)", run.cold)
            put("cold start: popularity", popularity_scores(split.train, split.cold_test, shop.items))
            prior = run_product(shop, split, seed, server_url, {"RECSYS_TRAIN__COLD_PRIOR": "true"})
            put("cold start: hybrid with the popularity prior (API, features)", prior.cold)
            put(
                "cold start: popularity prior weight (chosen on validation)",
                {"weight": float(prior.manifest["training"]["cold_prior"]["weight"])},
            )
        split, cutoff = temporal_split(shop)
        run = run_product(shop, split, seeds[0], server_url)
        put(f"temporal (from {cutoff}): hybrid (API), known", run.known)
        for name, values in library_baselines(split.train, split.known_test, shop.items, seeds[0]).items():
            put(f"temporal (from {cutoff}): {name}, known", values)
        if run.cold["customers"]:  # the real shop: every later buyer bought before
            put(f"temporal (from {cutoff}): hybrid (API, features), cold", run.cold)
            put(
                f"temporal (from {cutoff}): popularity, cold",
                popularity_scores(split.train, split.cold_test, shop.items),
            )
        put(f"temporal (from {cutoff}): cold-start customers", {"count": run.cold["customers"]})

    figures: dict[tuple[str, str], Figure] = {}
    for name, metrics in runs.items():
        for metric, series in metrics.items():
            figures[(name, metric)] = report.add(Figure(f"{name}: {metric}", "", series))
    for protocol in ("leave-20%-out",):
        for metric in ("ndcg", "hit"):
            ours = figures[(f"{protocol}: hybrid (API)", metric)]
            best = max(
                (figures[(f"{protocol}: {b}", metric)] for b in ("ALS", "item-kNN")), key=lambda f: f.median
            )
            report.ratio(
                f"{protocol}: hybrid / best library baseline, {metric}@10", ours, best, note=best.name
            )
            report.ratio(
                f"{protocol}: hybrid / popularity, {metric}@10",
                ours,
                figures[(f"{protocol}: popularity", metric)],
            )
    for metric in ("ndcg", "hit"):
        report.ratio(
            f"cold start: hybrid / popularity, {metric}@10",
            figures[("cold start: hybrid (API, features)", metric)],
            figures[("cold start: popularity", metric)],
        )
        report.ratio(
            f"cold start: hybrid with the prior / popularity, {metric}@10",
            figures[("cold start: hybrid with the popularity prior (API, features)", metric)],
            figures[("cold start: popularity", metric)],
        )
    for name, blended in blend.items():
        report.add(Figure(f"browsing blend, {name}: ndcg", "", blended["ndcg"]))
    return report


# ------------------------------------------------------------------------------- the generated shop
def _pair_sets(data: Any, rows: npt.NDArray[np.int64]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for u, i in zip(data.user_index[rows].tolist(), data.item_index[rows].tolist(), strict=True):
        out.setdefault(data.user_ids[u], set()).add(data.item_ids[i])
    return out


def _generated_report(quick: bool) -> Report:
    from infra.lake import latest_run, read_run
    from infra.objectstore import open_store
    from model_store.training import fit, prepare, split_pairs
    from recsys.settings import TrainSettings

    report = Report("model_eval_generated", scale={"scales": [1, 10], "k": TOP_K})
    cfg = TrainSettings()
    for scale in (1.0, 10.0):
        lake = prepared_model(scale, train_model=False, load=False).lake
        table = read_run(open_store(lake), latest_run(open_store(lake)))
        started = time.perf_counter()
        model = fit(table, cfg)
        seconds = time.perf_counter() - started
        m = model.metrics
        label = f"{scale:g}x"
        data = prepare(table)
        split = split_pairs(
            data.user_index,
            len(data.user_ids),
            cfg.seed,
            test_fraction=cfg.test_fraction,
            val_fraction=cfg.val_fraction,
            cold_fraction=cfg.cold_fraction,
        )

        baselines = library_baselines(
            _pair_sets(data, split.train), _pair_sets(data, split.test), data.item_ids, cfg.seed
        )
        report.add(Figure(f"{label}: pairs", "", [float(len(data.rating))]))
        report.add(
            Figure(
                f"{label}: fit time (evaluate + refit)",
                "s",
                [seconds],
                note=f"{model.training['epochs_run']} + {model.training['best_epoch']} epochs",
            )
        )
        ours = {
            "ndcg": report.add(Figure(f"{label}: hybrid ndcg@10", "", [m["ndcg_at_10"]])),
            "hit": report.add(Figure(f"{label}: hybrid hit@10", "", [m["hit_rate_at_10"]])),
        }
        report.add(Figure(f"{label}: hybrid recall@10", "", [m["recall_at_10"]]))
        report.add(Figure(f"{label}: hybrid coverage@10", "", [m["catalog_coverage_at_10"]]))
        for name, values in baselines.items():
            for metric in ("ndcg", "hit"):
                base = report.add(Figure(f"{label}: {name} {metric}@10", "", [values[metric]]))
                report.ratio(f"{label}: hybrid / {name}, {metric}@10", ours[metric], base)
        cold = report.add(Figure(f"{label}: cold start hybrid ndcg@10", "", [m["cold_ndcg_at_10"]]))
        cold_pop = report.add(
            Figure(f"{label}: cold start popularity ndcg@10", "", [m["cold_popular_ndcg_at_10"]])
        )
        report.ratio(f"{label}: cold start hybrid / popularity, ndcg@10", cold, cold_pop)
        with_prior = fit(table, cfg.model_copy(update={"cold_prior": True}))
        pm = with_prior.metrics
        prior = report.add(
            Figure(f"{label}: cold start hybrid with the prior ndcg@10", "", [pm["cold_ndcg_at_10"]])
        )
        prior_pop = report.add(
            Figure(
                f"{label}: cold start popularity ndcg@10 (prior's split)", "", [pm["cold_popular_ndcg_at_10"]]
            )
        )
        report.ratio(f"{label}: cold start hybrid with the prior / popularity, ndcg@10", prior, prior_pop)
        weight = float(with_prior.training["cold_prior"]["weight"])
        report.add(Figure(f"{label}: cold start prior weight (chosen on validation)", "", [weight]))
        rmse = report.add(Figure(f"{label}: rating RMSE", "", [m["rmse"]]))
        base = report.add(Figure(f"{label}: rating RMSE, mean", "", [m["rmse_mean_baseline"]]))
        report.ratio(f"{label}: RMSE / mean baseline", rmse, base)
        if quick:
            break
    return report


def main(quick: bool = False) -> None:
    server = os.environ.get("RECSYS_DATABASE_URL") or bench_stack().database_url
    real = _real_report(quick, server)
    if real is not None:
        real.print()
        print(f"results: {real.write()}")
    generated = _generated_report(quick)
    generated.print()
    print(f"results: {generated.write()}")
