"""Pure ranking rules: exclusion of browsed items and the merge of similar-item lists."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.events import BrowseItem
from core.recommendations import ScoredItem, browse_order, exclude, merge_similar


def items(*pairs: tuple[str, float]) -> list[ScoredItem]:
    return [ScoredItem(i, s) for i, s in pairs]


def test_browse_order_puts_cart_items_first_and_dedupes() -> None:
    history = [
        BrowseItem("A", 1, False),
        BrowseItem("B", 1, True),
        BrowseItem("A", 2, False),
        BrowseItem("C", 1, True),
    ]
    assert browse_order(history) == ["B", "C", "A"]


def test_exclude_drops_banned_and_duplicates_and_caps() -> None:
    got = exclude(items(("A", 0.9), ("B", 0.8), ("A", 0.7), ("C", 0.6), ("D", 0.5)), {"B"}, 2)
    assert [i.id for i in got] == ["A", "C"]


def test_merge_similar_round_robins_across_browsed_items() -> None:
    per_code = [
        ("CART", items(("x1", 0.99), ("x2", 0.98), ("x3", 0.97))),
        ("SEEN", items(("y1", 0.5), ("y2", 0.4))),
    ]
    merged = merge_similar(per_code, banned={"CART", "SEEN"}, k=4)
    assert merged.product_code == "CART"
    assert [i.id for i in merged.similar_items] == ["x1", "y1", "x2", "y2"]


def test_merge_similar_keeps_best_score_and_excludes_browsed() -> None:
    per_code = [("A", items(("B", 0.9), ("Z", 0.3))), ("B", items(("A", 0.9), ("Z", 0.8)))]
    merged = merge_similar(per_code, banned={"A", "B"}, k=5)
    assert [(i.id, i.score) for i in merged.similar_items] == [("Z", 0.8)]


def test_merge_similar_with_no_neighbours_names_the_first_code() -> None:
    merged = merge_similar([("A", [])], banned={"A"}, k=3)
    assert merged.product_code == "A" and merged.similar_items == ()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.lists(st.tuples(st.sampled_from("ABCDEFGHIJ"), st.floats(-1, 1)), max_size=8),
        ),
        max_size=3,
    ),
    st.integers(1, 6),
)
def test_merge_similar_invariants(raw: list[tuple[str, list[tuple[str, float]]]], k: int) -> None:
    per_code = [(code, items(*pairs)) for code, pairs in raw]
    banned = {code for code, _ in raw}
    merged = merge_similar(per_code, banned, k)
    ids = [i.id for i in merged.similar_items]
    assert len(ids) == len(set(ids)) <= k
    assert not banned & set(ids)
    offered = {i.id for _, lst in per_code for i in lst} - banned
    assert len(ids) == min(k, len(offered))
