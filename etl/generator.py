"""The deterministic shop generator: classicmodels-like customers and products, and ratings with signal.

Pure: numpy only, no I/O. The same ``(scale, seed)`` gives the same rows on every machine and
database. The generative story (also in docs/etl.md):

* Every (country, productLine) pair has a hidden **affinity** ``A ~ N(0, 0.8)`` (Norwegians like
  ships, say), drawn from a generator keyed by the seed and the two names, so it exists for any
  country or line, including those of an existing database.
* Money matters: ``zc`` is the customer's standardised log credit limit, ``zp`` the product's
  standardised log buy price; the **price fit** ``B * zc * zp`` (``B = 0.7``) makes rich customers
  rate expensive models higher and modest ones cheaper models.
* Each product has a **quality** ``q ~ N(0, 0.35)`` (what a popularity baseline can learn) and an
  **exposure** ``e ~ N(0, 0.5)`` (how often it gets rated at all).
* **Co-purchase sets**: the products of each line fall into sets of about six (a collector's series),
  and every customer follows ``SETS_PER_CUSTOMER`` = 3 sets, drawn with weights ``exp(1.5 A)`` over
  the sets' lines (the Gumbel top-k trick again): what people buy together, which only the purchase
  history shows (no feature names the set), so a model with ID embeddings learns it and a
  content-only model cannot.
* A customer rates ``k ~ Poisson(28 * sqrt(scale))`` products, drawn without replacement with
  weights ``exp(0.6 * (A + B zc zp) + 0.5 q + e + 3 * [in a followed set])`` (Gumbel top-k):
  people rate what they like and what completes their series more often. A purchased pair (from
  ``orderdetails``) is always rated, with a +0.4 bonus.
* The rating is ``s = 0.3 + A + B zc zp + q + N(0, 0.5)`` cut at -1.2, -0.4, 0.4, 1.2 into 1..5.

Features (country, credit limit, product line, price) explain most of the variance of the ratings,
so a two-tower content model beats a popularity baseline that only sees ``q``; which products a
customer rates also follows their sets, which the hybrid model's ID embeddings learn.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

__all__ = [
    "COUNTRIES",
    "GENERATOR_VERSION",
    "PRODUCT_LINES",
    "RatingModel",
    "ShopSize",
    "generate_customers",
    "generate_products",
    "rating_from_score",
    "shop_size",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

AFFINITY_SD = 0.8
PRICE_FIT = 0.7
QUALITY_SD = 0.35
EXPOSURE_SD = 0.5
NOISE_SD = 0.5
PURCHASE_BONUS = 0.4
RATING_CUTS = np.array([-1.2, -0.4, 0.4, 1.2])
GENERATOR_VERSION = 2  # bumped when the same (scale, seed) gives other rows (2: co-purchase sets)
BASE_RATINGS_PER_CUSTOMER = 28.0
SET_SIZE = 6  # products per co-purchase set, within a line
SETS_PER_CUSTOMER = 3
SET_PULL = 3.0  # added to the draw weight of the products of a customer's sets
BLOCK = 256  # customers per generation block: the unit of determinism and of memory

# (country, weight, [(city, state, postal code prefix)]) — the sample's countries and cities.
COUNTRIES: list[tuple[str, float, list[tuple[str, str | None, str]]]] = [
    (
        "USA",
        36,
        [
            ("San Francisco", "CA", "94"),
            ("NYC", "NY", "10"),
            ("Boston", "MA", "02"),
            ("Las Vegas", "NV", "83"),
            ("Philadelphia", "PA", "71"),
            ("San Rafael", "CA", "97"),
            ("New Haven", "CT", "97"),
            ("Cambridge", "MA", "51"),
            ("Glendale", "CA", "92"),
            ("Brickhaven", "MA", "58"),
        ],
    ),
    ("Germany", 13, [("Frankfurt", None, "60"), ("München", None, "80"), ("Köln", None, "50")]),
    (
        "France",
        12,
        [("Paris", None, "75"), ("Nantes", None, "44"), ("Lyon", None, "69"), ("Lille", None, "59")],
    ),
    ("Spain", 7, [("Madrid", None, "28"), ("Barcelona", None, "08"), ("Sevilla", None, "41")]),
    ("UK", 5, [("London", None, "WA1"), ("Manchester", None, "M1"), ("Liverpool", None, "L1")]),
    ("Australia", 5, [("Melbourne", "Victoria", "30"), ("Sydney", "NSW", "20"), ("Chatswood", "NSW", "20")]),
    ("Italy", 4, [("Torino", None, "10"), ("Milan", None, "20"), ("Bergamo", None, "24")]),
    ("New Zealand", 4, [("Auckland", None, "10"), ("Wellington", None, "60")]),
    ("Switzerland", 3, [("Genève", None, "12"), ("Bern", None, "30")]),
    ("Finland", 3, [("Helsinki", None, "00"), ("Espoo", None, "FIN-02"), ("Oulu", None, "90")]),
    ("Canada", 3, [("Montréal", "Québec", "H1J"), ("Vancouver", "BC", "V3F"), ("Tsawassen", "BC", "T2F")]),
    ("Singapore", 3, [("Singapore", None, "0")]),
    ("Denmark", 2, [("København", None, "13"), ("Århus", None, "80")]),
    ("Japan", 2, [("Tokyo", "Tokyo", "106"), ("Osaka", "Osaka", "530")]),
    ("Sweden", 2, [("Luleå", None, "S-958"), ("Bräcke", None, "S-844")]),
    ("Norway", 2, [("Stavern", None, "4110"), ("Bergen", None, "N 5804")]),
    ("Belgium", 2, [("Bruxelles", None, "1180"), ("Charleroi", None, "B-6000")]),
    ("Austria", 2, [("Graz", None, "8010"), ("Salzburg", None, "5020")]),
    ("Ireland", 2, [("Dublin", None, "2")]),
    ("Philippines", 1, [("Makati City", None, "1227")]),
    ("Hong Kong", 1, [("Central Hong Kong", None, "")]),
    ("Russia", 1, [("Saint Petersburg", None, "196143")]),
    ("Israel", 1, [("Herzlia", None, "47625")]),
    ("Poland", 1, [("Warszawa", None, "01-012")]),
    ("Portugal", 1, [("Lisboa", None, "1756")]),
    ("South Africa", 1, [("Johannesburg", None, "2195")]),
    ("Netherlands", 1, [("Amsterdam", None, "1081")]),
]

# (productLine, weight, makes, price level) — the sample's lines in its proportions.
PRODUCT_LINES: list[tuple[str, float, list[str], float]] = [
    ("Classic Cars", 38, ["Ferrari", "Ford Mustang", "Alfa Romeo", "Porsche", "Chevrolet", "Jaguar"], 1.3),
    ("Vintage Cars", 24, ["Mercedes-Benz SSK", "Bugatti", "Model A Ford", "Packard", "Duesenberg"], 1.0),
    ("Motorcycles", 13, ["Harley Davidson", "Ducati", "Moto Guzzi", "BMW R75", "Triumph"], 0.9),
    ("Planes", 12, ["Spitfire", "P-51-D Mustang", "Boeing", "Corsair F4U", "ATA: B757-300"], 0.9),
    ("Trucks and Buses", 11, ["Mack", "Peterbilt", "Ford F-150", "Volkswagen Bus", "Diamond T620"], 0.9),
    ("Ships", 9, ["HMS Bounty", "The Mayflower", "Titanic", "Pont Yacht", "Queen Mary"], 0.8),
    ("Trains", 3, ["Collectable Wooden Train", "1950's Chicago Surface Lines", "American Locomotive"], 0.7),
]
SCALES = [
    ("1:10", 6),
    ("1:12", 9),
    ("1:18", 42),
    ("1:24", 27),
    ("1:32", 8),
    ("1:50", 5),
    ("1:700", 10),
    ("1:72", 4),
]
VENDORS = [
    "Min Lin Diecast",
    "Classic Metal Creations",
    "Highway 66 Mini Classics",
    "Red Start Diecast",
    "Motor City Art Classics",
    "Second Gear Diecast",
    "Autoart Studio Design",
    "Welly Diecast Productions",
    "Unimax Art Galleries",
    "Studio M Art Models",
    "Exoto Designs",
    "Gearbox Collectibles",
    "Carousel DieCast Legends",
]
_NAME_A = [
    "Atelier",
    "Signal",
    "Australian",
    "Mini",
    "Euro",
    "Classic",
    "Vintage",
    "Royal",
    "Diecast",
    "Heritage",
]
_NAME_B = ["Gift", "Collectors", "Classics", "Models", "Replicas", "Wheels", "Toys", "Imports", "Souveniers"]
_NAME_C = ["Co.", "Ltd.", "Inc.", "Stores", "Shop", "GmbH", "& Co", "Distributors", "Corp."]
_FIRST = [
    "Carine",
    "Jean",
    "Peter",
    "Janine",
    "Jonas",
    "Susan",
    "Roland",
    "Julie",
    "Diego",
    "Yu",
    "Anna",
    "Mike",
]
_LAST = [
    "Schmitt",
    "King",
    "Ferguson",
    "Labrune",
    "Bergulfsen",
    "Nelson",
    "Keitel",
    "Murphy",
    "Freyre",
    "Choi",
]
_STREETS = ["rue Royale", "Strong St.", "St Kilda Road", "Hansastr.", "Moss Ave", "Baden-Allee", "Via Monte"]
_MODELS = ["Ultimate", "GT", "Roadster", "Deluxe", "Special", "Classic", "Limited", "Sport"]


@dataclass(frozen=True, slots=True)
class ShopSize:
    customers: int
    products: int
    ratings_per_customer: float  # the Poisson mean


def shop_size(scale: float) -> ShopSize:
    """1 = the sample's size (122 customers, 110 products, ~3.4k ratings); ratings grow as scale^1.5."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    root = math.sqrt(scale)
    return ShopSize(
        customers=max(5, round(122 * scale)),
        products=max(5, round(110 * root)),
        ratings_per_customer=BASE_RATINGS_PER_CUSTOMER * root,
    )


def _weighted(rng: np.random.Generator, weights: Sequence[float], n: int) -> IntArray:
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def generate_customers(scale: float, seed: int) -> list[dict[str, object]]:
    """Customers in the classicmodels ``customers`` shape, numbered from 103."""
    n = shop_size(scale).customers
    rng = np.random.default_rng([seed, 1])
    countries = _weighted(rng, [c[1] for c in COUNTRIES], n)
    rows: list[dict[str, object]] = []
    for i in range(n):
        country, _, cities = COUNTRIES[int(countries[i])]
        city, state, postal = cities[int(rng.integers(len(cities)))]
        zero_credit = rng.random() < 0.18
        credit = (
            0.0
            if zero_credit
            else float(np.clip(round(rng.lognormal(math.log(85_000), 0.45), -2), 10_000, 230_000))
        )
        first, last = _FIRST[int(rng.integers(len(_FIRST)))], _LAST[int(rng.integers(len(_LAST)))]
        words = (_NAME_A, _NAME_B, _NAME_C)
        name = " ".join(w[int(rng.integers(len(w)))] for w in words)
        rows.append(
            {
                "customerNumber": 103 + 3 * i,
                "customerName": name[:50],
                "contactLastName": last,
                "contactFirstName": first,
                "phone": f"{rng.integers(10, 99)}.{rng.integers(10, 99)}.{rng.integers(1000, 9999)}",
                "addressLine1": f"{rng.integers(1, 9999)} {_STREETS[int(rng.integers(len(_STREETS)))]}",
                "addressLine2": None,
                "city": city,
                "state": state,
                "postalCode": (postal + f"{rng.integers(0, 999):03d}")[:15] if postal else None,
                "country": country,
                "salesRepEmployeeNumber": None,
                "creditLimit": Decimal(f"{credit:.2f}"),
            }
        )
    return rows


def generate_products(scale: float, seed: int) -> list[dict[str, object]]:
    """Products in the classicmodels ``products`` shape; codes like the sample's (``S18_1000``)."""
    n = shop_size(scale).products
    rng = np.random.default_rng([seed, 2])
    lines = _weighted(rng, [line[1] for line in PRODUCT_LINES], n)
    scales = _weighted(rng, [s[1] for s in SCALES], n)
    rows: list[dict[str, object]] = []
    for i in range(n):
        line, _, makes, level = PRODUCT_LINES[int(lines[i])]
        scale_name = SCALES[int(scales[i])][0]
        buy = float(np.clip(rng.normal(55 * level, 18), 15, 110))
        msrp = buy * float(rng.uniform(1.35, 2.2))
        make = makes[int(rng.integers(len(makes)))]
        model = _MODELS[int(rng.integers(len(_MODELS)))]
        rows.append(
            {
                "productCode": f"S{scale_name.split(':')[1]}_{1000 + i}",
                "productName": f"{int(rng.integers(1900, 2005))} {make} {model}"[:70],
                "productLine": line,
                "productScale": scale_name,
                "productVendor": VENDORS[int(rng.integers(len(VENDORS)))],
                "productDescription": f"{scale_name} replica of the {make}: detailed interior, opening doors",
                "quantityInStock": int(rng.integers(0, 10_000)),
                "buyPrice": Decimal(f"{buy:.2f}"),
                "MSRP": Decimal(f"{msrp:.2f}"),
            }
        )
    return rows


def rating_from_score(score: FloatArray) -> npt.NDArray[np.int8]:
    """Cut the latent score into a 1..5 rating."""
    return (np.searchsorted(RATING_CUTS, score) + 1).astype(np.int8)


def _standardise(values: FloatArray) -> FloatArray:
    logged = np.log1p(np.maximum(values, 0.0))
    sd = float(logged.std())
    return (logged - logged.mean()) / sd if sd > 0 else np.zeros_like(logged)


def _named_normal(seed: int, tag: int, *names: str) -> float:
    keys = [seed, tag, *(zlib.crc32(name.encode()) for name in names)]
    return float(np.random.default_rng(keys).standard_normal())


class RatingModel:
    """The hidden preferences of one shop: who likes what, given their features.

    Built from the customers (number, country, credit limit) and products (code, line, buy price)
    in a fixed order; ``blocks`` yields the ratings, a block of customers at a time.
    """

    def __init__(
        self,
        customers: Sequence[tuple[int, str | None, float | None]],
        products: Sequence[tuple[str, str | None, float | None]],
        seed: int,
    ) -> None:
        if not customers or not products:
            raise ValueError("the shop needs at least one customer and one product to rate")
        self.seed = seed
        self.customer_numbers = [int(c[0]) for c in customers]
        self.product_codes = [str(p[0]) for p in products]
        countries = sorted({c[1] or "" for c in customers})
        lines = sorted({p[1] or "" for p in products})
        self.country_index = np.array([countries.index(c[1] or "") for c in customers], dtype=np.int64)
        self.line_index = np.array([lines.index(p[1] or "") for p in products], dtype=np.int64)
        self.affinity = AFFINITY_SD * np.array(
            [[_named_normal(seed, 11, country, line) for line in lines] for country in countries]
        )
        credit = np.array([c[2] if c[2] is not None else np.nan for c in customers], dtype=np.float64)
        credit = np.where(
            np.isnan(credit), np.nanmedian(credit) if np.isfinite(credit).any() else 0.0, credit
        )
        price = np.array([p[2] if p[2] is not None else np.nan for p in products], dtype=np.float64)
        price = np.where(np.isnan(price), np.nanmedian(price) if np.isfinite(price).any() else 0.0, price)
        self.zc = _standardise(credit)
        self.zp = _standardise(price)
        item_rng = np.random.default_rng([seed, 12])
        self.quality = QUALITY_SD * item_rng.standard_normal(len(products))
        self.exposure = EXPOSURE_SD * item_rng.standard_normal(len(products))
        # co-purchase sets: each line's products (in code order, shuffled) cut into sets of SET_SIZE
        set_rng = np.random.default_rng([seed, 14])
        self.product_set = np.zeros(len(products), dtype=np.int64)
        set_lines: list[int] = []
        for line in range(len(lines)):
            members = set_rng.permutation(np.flatnonzero(self.line_index == line))
            for start in range(0, len(members), SET_SIZE):
                self.product_set[members[start : start + SET_SIZE]] = len(set_lines)
                set_lines.append(line)
        self.set_line = np.array(set_lines, dtype=np.int64)

    def preference(self, customer_idx: IntArray) -> FloatArray:
        """Affinity plus price fit for each (customer in ``customer_idx``, product): shape (n, products)."""
        affinity = self.affinity[self.country_index[customer_idx]][:, self.line_index]
        return affinity + PRICE_FIT * np.outer(self.zc[customer_idx], self.zp)

    def _followed_sets(self, customer_idx: IntArray, rng: np.random.Generator) -> FloatArray:
        """1.0 where the product is in one of the customer's followed sets: (n, products)."""
        n_sets = len(self.set_line)
        line_affinity = self.affinity[self.country_index[customer_idx]][:, self.set_line]  # (n, sets)
        draw = 1.5 * line_affinity + rng.gumbel(size=(len(customer_idx), n_sets))
        followed = np.argsort(-draw, axis=1)[:, : min(SETS_PER_CUSTOMER, n_sets)]
        in_set = np.zeros((len(customer_idx), n_sets), dtype=np.float64)
        np.put_along_axis(in_set, followed, 1.0, axis=1)
        return in_set[:, self.product_set]

    def blocks(
        self, ratings_per_customer: float, purchased: Mapping[int, set[str]] | None = None
    ) -> Iterator[list[tuple[int, str, int]]]:
        """``(customerNumber, productCode, rating)`` rows, one block of customers at a time.

        Purchased pairs are always rated (with a bonus); the rest are drawn by preference.
        Deterministic per block: the same seed gives the same rows whatever the caller does.
        """
        n_products = len(self.product_codes)
        code_index = {code: j for j, code in enumerate(self.product_codes)}
        purchased = purchased or {}
        for start in range(0, len(self.customer_numbers), BLOCK):
            idx = np.arange(start, min(start + BLOCK, len(self.customer_numbers)), dtype=np.int64)
            rng = np.random.default_rng([self.seed, 13, start // BLOCK])
            pref = self.preference(idx)
            base = pref + self.quality + 0.3
            noise = NOISE_SD * rng.standard_normal(pref.shape)
            gumbel = rng.gumbel(size=pref.shape)
            weights = 0.6 * pref + 0.5 * self.quality + self.exposure + gumbel
            weights += SET_PULL * self._followed_sets(idx, rng)
            counts = np.clip(rng.poisson(ratings_per_customer, size=len(idx)), 1, max(1, n_products // 2))
            rows: list[tuple[int, str, int]] = []
            for row, i in enumerate(idx):
                number = self.customer_numbers[int(i)]
                bought = np.array(
                    sorted(code_index[c] for c in purchased.get(number, ()) if c in code_index),
                    dtype=np.int64,
                )
                if bought.size:
                    weights[row, bought] = -np.inf
                k = int(min(counts[row], n_products - bought.size))
                drawn = np.argpartition(-weights[row], k - 1)[:k] if k > 0 else np.empty(0, dtype=np.int64)
                chosen = np.concatenate([bought, np.sort(drawn)]).astype(np.int64)
                bonus = np.zeros(chosen.size)
                bonus[: bought.size] = PURCHASE_BONUS
                ratings = rating_from_score(base[row, chosen] + noise[row, chosen] + bonus)
                code = self.product_codes
                rows.extend((number, code[int(j)], int(r)) for j, r in zip(chosen, ratings, strict=True))
            yield rows
