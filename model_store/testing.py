"""Test doubles shipped next to the code: a synthetic training table with a known structure.

Which products a customer rates (buys) and how they rate them follow:

- country x productLine: each country likes a few product lines and dislikes others (the features
  carry it: what a cold-start customer's vector can learn);
- co-purchase sets: the products fall into small sets within their line, and each customer buys
  mostly from two sets of lines their country likes (only the purchase history carries it: what the
  ID embeddings learn);
- creditLimit x price: customers with a high credit limit rate expensive products higher;
- a per-product popularity (how often it is bought at all, and its ratings), so the popularity
  baseline is a fair opponent.

Columns and types are those of the lake's training data (DESIGN.md), so tests and benchmarks run the
real trainer without the ETL pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from model_store.artifacts import ArtifactBundle
    from model_store.training import PopularItem, TrainedModel, TrainingData

__all__ = ["TRAINING_SCHEMA", "catalog_bundle", "synthetic_ratings"]

TRAINING_SCHEMA = pa.schema(
    [
        ("customerNumber", pa.int64()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("postalCode", pa.string()),
        ("country", pa.string()),
        ("creditLimit", pa.float64()),
        ("productCode", pa.string()),
        ("productLine", pa.string()),
        ("productScale", pa.string()),
        ("quantityInStock", pa.int64()),
        ("buyPrice", pa.float64()),
        ("MSRP", pa.float64()),
        ("productRating", pa.float64()),
    ]
)

LINES = ("Classic Cars", "Motorcycles", "Planes", "Ships", "Trains", "Trucks and Buses", "Vintage Cars")
SCALES = ("1:10", "1:12", "1:18", "1:24", "1:32", "1:50", "1:72", "1:700")
COUNTRIES = (
    "USA", "France", "Germany", "Spain", "Australia", "UK", "Japan", "Italy", "Norway", "Finland",
    "Singapore", "Canada", "Denmark", "Sweden", "Switzerland", "Belgium", "New Zealand",
)  # fmt: skip


def synthetic_ratings(
    n_customers: int = 122,
    n_products: int = 110,
    ratings_per_customer: int = 25,
    seed: int = 0,
    noise: float = 0.6,
) -> pa.Table:
    """A training table of ``n_customers * ratings_per_customer`` ratings (1-5)."""
    rng = np.random.default_rng(seed)
    countries = np.array(COUNTRIES)
    cust_country = rng.choice(len(countries), n_customers)
    cities_per_country = max(1, n_customers // (len(countries) * 2))
    cust_city = [f"{countries[c]} City {rng.integers(cities_per_country)}" for c in cust_country]
    credit = np.round(rng.lognormal(np.log(80_000), 0.5, n_customers), 2)
    credit[rng.random(n_customers) < 0.05] = 0.0  # the real data has some zero limits

    prod_line = rng.choice(len(LINES), n_products)
    prod_scale = rng.choice(len(SCALES), n_products)
    buy = np.round(rng.uniform(15, 105, n_products), 2)
    msrp = np.round(buy * rng.uniform(1.4, 2.2, n_products), 2)
    stock = rng.integers(0, 10_000, n_products)
    popularity = rng.normal(0, 0.4, n_products)

    affinity = rng.normal(0, 1.0, (len(countries), len(LINES)))
    credit_z = (np.log1p(credit) - np.log1p(credit).mean()) / (np.log1p(credit).std() or 1.0)
    price_z = (buy - buy.mean()) / (buy.std() or 1.0)
    per_line = max(1, n_products // (6 * len(LINES)))  # co-purchase sets of ~6 products within a line
    product_set = prod_line * per_line + rng.integers(per_line, size=n_products)
    n_sets = len(LINES) * per_line
    set_line = np.arange(n_sets) // per_line

    rows: dict[str, list[Any]] = {name: [] for name in TRAINING_SCHEMA.names}
    per = min(ratings_per_customer, n_products)
    for c in range(n_customers):
        liked = affinity[cust_country[c]]
        set_weight = 1.5 * liked[set_line] + rng.gumbel(size=n_sets)
        favourite = np.argsort(-set_weight)[:2]
        weight = (
            0.8 * liked[prod_line]
            + 2.5 * np.isin(product_set, favourite)
            + popularity * 2.0
            + rng.gumbel(size=n_products)
        )
        products = np.argsort(-weight)[:per]
        for p in products:
            latent = (
                affinity[cust_country[c], prod_line[p]]
                + 0.8 * credit_z[c] * price_z[p]
                + popularity[p]
                + rng.normal(0, noise)
            )
            rating = int(np.clip(np.round(3 + 1.1 * latent), 1, 5))
            rows["customerNumber"].append(100 + c)
            rows["city"].append(cust_city[c])
            rows["state"].append(None)
            rows["postalCode"].append(f"{10000 + c}")
            rows["country"].append(str(countries[cust_country[c]]))
            rows["creditLimit"].append(float(credit[c]))
            rows["productCode"].append(f"S{10 + p % 90}_{1000 + p}")
            rows["productLine"].append(LINES[prod_line[p]])
            rows["productScale"].append(SCALES[prod_scale[p]])
            rows["quantityInStock"].append(int(stock[p]))
            rows["buyPrice"].append(float(buy[p]))
            rows["MSRP"].append(float(msrp[p]))
            rows["productRating"].append(float(rating))
    return pa.table(rows, schema=TRAINING_SCHEMA)


def catalog_bundle(
    model: TrainedModel,
    data: TrainingData,
    *,
    users: int | None = None,
    popular: list[PopularItem] | None = None,
    bought: list[list[str]] | None = None,
) -> ArtifactBundle:
    """A loadable version of ``model`` over another catalog: its towers embed ``data``'s items and
    its first ``users`` customers (all by default) from their features (the catalog's IDs are new to
    the model); the popular items are ``data``'s ranking (at most 1000) and each customer's bought
    items their pairs in ``data`` (a hybrid model), unless given. For tests and benchmarks that need
    a large catalog."""
    from model_store.artifacts import ArtifactBundle, new_version
    from model_store.model import ServingTower, save_state_dict
    from model_store.training import rank_popular

    n = len(data.user_ids) if users is None else users
    if popular is None:
        popular = rank_popular(data.item_ids, data.item_index, data.rating)[:1000]
    user_tower = ServingTower.from_state_dict(model.state_dict, "user_tower")
    item_tower = ServingTower.from_state_dict(model.state_dict, "item_tower")
    weights = save_state_dict(model.export_state_dict())
    if bought is None and model.config.hybrid:
        bought = data.bought()
    return ArtifactBundle(
        version=new_version(weights),
        config=model.config,
        weights=weights,
        user_transform=model.user_transform,
        item_transform=model.item_transform,
        item_ids=data.item_ids,
        item_vectors=item_tower.embed(model.item_transform.dense(data.item_columns)),
        user_ids=data.user_ids[:n],
        user_vectors=user_tower.embed(
            model.user_transform.dense({c: v[:n] for c, v in data.user_columns.items()})
        ),
        popular=popular,
        user_bought=None if bought is None else bought[:n],
    )


def previous_release_layout(folder: str) -> None:
    """Rewrite the exported hybrid version in the local ``folder`` as the release before
    ``user_bought.csv`` wrote it: the bought lists in a third ``bought`` column of
    ``user_embeddings.csv``, no ``user_bought.csv``, the manifest's checksums to match. For the
    back-compatibility tests."""
    import csv
    import hashlib
    import io
    import json
    from pathlib import Path

    from model_store.artifacts import FILES, MANIFEST

    root = Path(folder)
    embeddings = list(csv.reader(io.StringIO((root / FILES["user_embeddings"]).read_text())))
    bought = list(csv.reader(io.StringIO((root / FILES["user_bought"]).read_text())))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "embedding", "bought"])
    for (ident, vector), (_, items) in zip(embeddings[1:], bought[1:], strict=True):
        writer.writerow([ident, vector, items])
    body = out.getvalue().encode()
    (root / FILES["user_embeddings"]).write_bytes(body)
    (root / FILES["user_bought"]).unlink()
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["files"][FILES["user_bought"]]
    digest = hashlib.sha256(body).hexdigest()
    manifest["files"][FILES["user_embeddings"]] = {"sha256": digest, "bytes": len(body)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
