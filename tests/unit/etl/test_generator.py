"""The shop generator: deterministic, classicmodels-like, and its ratings carry learnable signal."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from etl.generator import (
    RatingModel,
    generate_customers,
    generate_products,
    rating_from_score,
    shop_size,
)


def _model(scale: float, seed: int) -> tuple[RatingModel, list[dict[str, object]], list[dict[str, object]]]:
    customers = generate_customers(scale, seed)
    products = generate_products(scale, seed)
    model = RatingModel(
        [(int(c["customerNumber"]), str(c["country"]), float(c["creditLimit"])) for c in customers],
        [(str(p["productCode"]), str(p["productLine"]), float(p["buyPrice"])) for p in products],
        seed,
    )
    return model, customers, products


def _ratings(
    scale: float, seed: int, purchased: dict[int, set[str]] | None = None
) -> list[tuple[int, str, int]]:
    model, _, _ = _model(scale, seed)
    return [row for block in model.blocks(shop_size(scale).ratings_per_customer, purchased) for row in block]


def test_scale_one_is_the_samples_size() -> None:
    size = shop_size(1)
    assert (size.customers, size.products) == (122, 110)
    assert 2_500 < len(_ratings(1, 42)) < 5_000
    assert shop_size(100).customers == 12_200
    assert shop_size(100).customers * shop_size(100).ratings_per_customer > 2_000_000
    with pytest.raises(ValueError, match="positive"):
        shop_size(0)


def test_same_seed_same_rows_and_another_seed_differs() -> None:
    assert generate_customers(1, 7) == generate_customers(1, 7)
    assert generate_products(1, 7) == generate_products(1, 7)
    assert _ratings(1, 7) == _ratings(1, 7)
    assert _ratings(1, 7) != _ratings(1, 8)


def test_rows_look_like_classicmodels() -> None:
    customers, products = generate_customers(2, 1), generate_products(2, 1)
    assert len({c["customerNumber"] for c in customers}) == len(customers)
    assert len({p["productCode"] for p in products}) == len(products)
    assert {c["country"] for c in customers} >= {"USA", "France", "Germany"}
    assert {p["productLine"] for p in products} >= {"Classic Cars", "Vintage Cars", "Motorcycles"}
    for p in products:
        assert str(p["productCode"]).startswith("S") and 0 <= int(p["quantityInStock"]) < 10_000
        assert p["MSRP"] > p["buyPrice"]
    usa = [c for c in customers if c["country"] == "USA"]
    assert all(c["state"] for c in usa)


def test_ratings_are_one_to_five_and_unique_pairs() -> None:
    rows = _ratings(1, 3)
    assert {r for _, _, r in rows} <= {1, 2, 3, 4, 5}
    assert len({(c, p) for c, p, _ in rows}) == len(rows)
    assert list(rating_from_score(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]))) == [1, 2, 3, 4, 5]


def test_purchased_pairs_are_always_rated() -> None:
    model, customers, products = _model(1, 5)
    first, second = int(customers[0]["customerNumber"]), int(customers[1]["customerNumber"])
    bought = {first: {str(products[0]["productCode"]), str(products[1]["productCode"])}, second: {"S99_nope"}}
    rows = [row for block in model.blocks(3.0, bought) for row in block]
    assert {(first, code) for code in bought[first]} <= {(c, p) for c, p, _ in rows}


def test_features_predict_ratings_better_than_popularity() -> None:
    """A model that sees (country, line, price fit) beats the per-item mean on held-out ratings."""
    model, customers, products = _model(4, 11)
    country = {int(c["customerNumber"]): c["country"] for c in customers}
    credit = {int(c["customerNumber"]): float(c["creditLimit"]) for c in customers}
    line = {str(p["productCode"]): p["productLine"] for p in products}
    rows = [row for block in model.blocks(shop_size(4).ratings_per_customer) for row in block]
    rng = np.random.default_rng(0)
    test = rng.random(len(rows)) < 0.2
    train = [r for r, t in zip(rows, test, strict=True) if not t]
    held = [r for r, t in zip(rows, test, strict=True) if t]
    mean = float(np.mean([r for *_, r in train]))

    item: dict[str, list[int]] = defaultdict(list)
    cell: dict[tuple[object, object, bool], list[int]] = defaultdict(list)
    median_credit = float(np.median(list(credit.values())))
    for c, p, r in train:
        item[p].append(r)
        cell[(country[c], line[p], credit[c] > median_credit)].append(r)

    def rmse(predict: object) -> float:
        errors = [(predict(c, p) - r) ** 2 for c, p, r in held]
        return float(np.sqrt(np.mean(errors)))

    popularity = rmse(lambda c, p: float(np.mean(item[p])) if item[p] else mean)
    content = rmse(
        lambda c, p: (
            float(np.mean(cell[k]))
            if len(cell[k := (country[c], line[p], credit[c] > median_credit)]) >= 3
            else mean
        )
    )
    assert content < 0.92 * popularity, (content, popularity)


def test_customers_buy_together_within_co_purchase_sets() -> None:
    """Two products of one set are rated by the same customer far more often than two products of
    the same line in different sets: what only the purchase history (ID embeddings) can learn."""
    model, _, _ = _model(2, 13)
    rows = [row for block in model.blocks(shop_size(2).ratings_per_customer) for row in block]
    index = {code: j for j, code in enumerate(model.product_codes)}
    by_customer: dict[int, list[int]] = defaultdict(list)
    for c, p, _ in rows:
        by_customer[c].append(index[p])
    same_set = same_line = 0
    for items in by_customer.values():
        for a in items:
            for b in items:
                if a < b and model.line_index[a] == model.line_index[b]:
                    if model.product_set[a] == model.product_set[b]:
                        same_set += 1
                    else:
                        same_line += 1
    # pairs available: per line, sets of 6 -> far fewer same-set pairs than same-line pairs
    possible_same_set = sum(int(n) * (int(n) - 1) // 2 for n in np.bincount(model.product_set))
    lines = np.bincount(model.line_index)
    possible_same_line = sum(int(n) * (int(n) - 1) // 2 for n in lines) - possible_same_set
    lift = (same_set / possible_same_set) / (same_line / possible_same_line)
    assert lift > 1.8, lift  # ~2.2: a customer follows 3 of the ~26 sets, and rates ~40 products
