"""Exact item-to-item neighbours computed at load time."""

from __future__ import annotations

import numpy as np

from model_store.loader import exact_neighbours, table_names


def test_exact_neighbours_exclude_self_sort_by_score_and_break_ties_by_index() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = vectors[3]  # a duplicate: a tie for everyone else
    idx, scores = exact_neighbours(vectors, 10, chunk=16)  # chunks smaller than the catalog
    assert idx.shape == scores.shape == (50, 10)
    for row in range(50):
        assert row not in idx[row]
        expected = sorted(
            (j for j in range(50) if j != row), key=lambda j: (-float(vectors[row] @ vectors[j]), j)
        )
        np.testing.assert_array_equal(idx[row], expected[:10])
        assert list(scores[row]) == sorted(scores[row], reverse=True)
    assert idx[3][0] == 7 and idx[7][0] == 3


def test_neighbours_of_a_tiny_catalog() -> None:
    idx, scores = exact_neighbours(np.eye(3, dtype=np.float32), 100)
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1]]  # all scores tie at 0: by index
    assert scores.tolist() == [[0, 0]] * 3
    idx, _ = exact_neighbours(np.eye(1, dtype=np.float32), 100)
    assert idx.shape == (1, 0)


def test_table_names_are_safe_identifiers() -> None:
    items, users = table_names("20261126T061502123Z-1a2b3c4d")
    assert items == "item_emb__20261126t061502123z_1a2b3c4d"
    assert users == "user_emb__20261126t061502123z_1a2b3c4d"
