"""PrefixCache: a list fetched for depth d answers every depth <= d; bounded; LRU out."""

from __future__ import annotations

import pytest

from core.prefix_cache import PrefixCache


def test_a_list_answers_shallower_asks_and_misses_deeper_ones() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=10, max_depth=100)
    assert cache.get("a", 3) is None
    cache.put("a", [1, 2, 3, 4, 5], depth=5)
    assert cache.get("a", 3) == (1, 2, 3)
    assert cache.get("a", 5) == (1, 2, 3, 4, 5)
    assert cache.get("a", 6) is None  # the scan may hold a 6th item: ask again
    assert (cache.hits, cache.misses) == (2, 2)


def test_a_list_shorter_than_its_depth_is_the_whole_answer() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=10, max_depth=100)
    cache.put("small catalog", [1, 2], depth=10)
    assert cache.get("small catalog", 50) == (1, 2)
    cache.put("nothing", [], depth=3)
    assert cache.get("nothing", 99) == ()


def test_a_deeper_entry_is_not_replaced_by_a_shallower_one() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=10, max_depth=100)
    cache.put("a", [1, 2, 3, 4], depth=4)
    cache.put("a", [1, 2], depth=2)
    assert cache.get("a", 4) == (1, 2, 3, 4)
    cache.put("a", [1, 2, 3, 4, 5, 6], depth=6)
    assert cache.get("a", 6) == (1, 2, 3, 4, 5, 6)
    cache.put("b", [1], depth=5)  # complete
    cache.put("b", [1], depth=1)  # a shallower fetch must not make it incomplete
    assert cache.get("b", 5) == (1,)


def test_lists_deeper_than_max_depth_keep_their_prefix() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=10, max_depth=3)
    cache.put("a", [1, 2, 3, 4, 5], depth=5)
    assert cache.get("a", 3) == (1, 2, 3)
    assert cache.get("a", 4) is None
    cache.put("b", [1, 2, 3, 4], depth=9)  # complete, but too long to keep whole
    assert cache.get("b", 9) is None


def test_least_recently_used_keys_leave_first() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=2, max_depth=10)
    cache.put("a", [1], depth=1)
    cache.put("b", [2], depth=1)
    assert cache.get("a", 1) == (1,)  # a is now the most recent
    cache.put("c", [3], depth=1)
    assert len(cache) == 2
    assert cache.get("b", 1) is None
    assert cache.get("a", 1) == (1,)
    assert cache.get("c", 1) == (3,)


def test_zero_keys_is_off() -> None:
    cache: PrefixCache[str, int] = PrefixCache(max_keys=0, max_depth=10)
    cache.put("a", [1], depth=1)
    assert cache.get("a", 1) is None
    assert (len(cache), cache.hits, cache.misses, cache.enabled) == (0, 0, 0, False)
    with pytest.raises(ValueError, match="max_keys"):
        PrefixCache(max_keys=-1, max_depth=10)
