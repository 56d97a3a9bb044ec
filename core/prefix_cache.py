"""A bounded LRU of ranked lists whose shorter answers are prefixes of longer ones.

The recommender's lists have that property: an HNSW scan in ``strict_order`` returns the same items
in the same order whatever LIMIT it is given, and a precomputed neighbour list sliced to ``n`` is
the first ``n`` of any longer slice. So a list fetched for depth ``d`` answers every request for
depth ``<= d``, and a list shorter than the depth it was fetched for is the whole answer (the
catalog ran out) and answers every depth.

One cache belongs to one model version: the lists are only valid while the version's tables are,
and those never change once loaded. A new version starts a new cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["PrefixCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PrefixCache(Generic[K, V]):
    """At most ``max_keys`` lists of at most ``max_depth`` items each, least recently used first out.

    ``max_keys = 0`` turns the cache off: every lookup misses and nothing is kept (nor counted).
    """

    __slots__ = ("_entries", "hits", "max_depth", "max_keys", "misses")

    def __init__(self, max_keys: int, max_depth: int) -> None:
        if max_keys < 0 or max_depth < 1:
            raise ValueError("max_keys must be >= 0 and max_depth >= 1")
        self.max_keys = max_keys
        self.max_depth = max_depth
        self.hits = 0
        self.misses = 0
        # key -> (items, complete): complete = the list holds every item there is
        self._entries: OrderedDict[K, tuple[tuple[V, ...], bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_keys > 0

    def get(self, key: K, depth: int) -> tuple[V, ...] | None:
        """The first ``depth`` items of ``key``'s list, or None when the cache cannot tell them."""
        if not self.max_keys:
            return None
        entry = self._entries.get(key)
        if entry is None or (not entry[1] and len(entry[0]) < depth):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0][:depth]

    def put(self, key: K, items: Sequence[V], depth: int) -> None:
        """Keep ``items``, the answer fetched for ``depth`` (fewer items than that = the whole list).

        A list deeper than ``max_depth`` keeps its first ``max_depth`` items (they still answer the
        shallower requests); an entry that already answers more is not replaced by a shallower one.
        """
        if not self.max_keys or depth < 1:
            return
        complete = len(items) < depth
        kept = tuple(items)
        if len(kept) > self.max_depth:
            kept, complete = kept[: self.max_depth], False
        old = self._entries.get(key)
        if old is not None and (old[1] or (not complete and len(old[0]) >= len(kept))):
            self._entries.move_to_end(key)
            return
        self._entries[key] = (kept, complete)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
