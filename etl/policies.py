"""Update policies for repeated ratings of the same (customer, product) pair. Pure.

A source whose ``ratings`` has a primary key on the pair has no repeats, and every policy gives the
same rows. A source without that key (an append-only ratings log) is read ordered by the pair, and
:class:`RepeatReducer` folds each run of rows of one pair into one row, streaming (a pair's group
may straddle two chunks; it is carried over):

* ``replace`` (default): the later row replaces the earlier one, in read order (the source is
  read ordered by its time column when it has one).
* ``latest``: the row with the greatest time column value (the source must have one).
* ``average``: the pair's mean rating (the other columns from the last row).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

__all__ = ["POLICIES", "Policy", "RepeatReducer"]

Policy = Literal["replace", "latest", "average"]
POLICIES: tuple[str, ...] = get_args(Policy)

Row = Sequence[Any]


class RepeatReducer:
    """Fold consecutive rows with the same key into one, by ``policy``.

    ``key`` are the indexes of the pair's columns, ``rating`` the rating's index, ``time`` the time
    column's index (required for ``latest``). Feed chunks in key order with :meth:`feed`; call
    :meth:`finish` at the end for the last group.
    """

    def __init__(self, policy: Policy, key: tuple[int, int], rating: int, time: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown update policy {policy!r}; choose from {', '.join(POLICIES)}")
        if policy == "latest" and time is None:
            raise ValueError("the latest policy needs a time column")
        self.policy = policy
        self.key = key
        self.rating = rating
        self.time = time
        self._group: list[Row] = []
        self.repeats = 0  # rows folded away

    def _key(self, row: Row) -> tuple[Any, Any]:
        return row[self.key[0]], row[self.key[1]]

    def _fold(self, group: list[Row]) -> list[Any]:
        self.repeats += len(group) - 1
        if len(group) == 1:
            return list(group[0])
        if self.policy == "replace":
            return list(group[-1])
        if self.policy == "latest":
            index = self.time
            assert index is not None
            best = group[0]
            for row in group[1:]:
                if row[index] is not None and (best[index] is None or row[index] >= best[index]):
                    best = row
            return list(best)
        folded = list(group[-1])
        ratings = [float(r[self.rating]) for r in group if r[self.rating] is not None]
        folded[self.rating] = sum(ratings) / len(ratings) if ratings else None
        return folded

    def feed(self, rows: Iterable[Row]) -> list[list[Any]]:
        """The rows whose group is complete; the last group waits for the next chunk."""
        out: list[list[Any]] = []
        group = self._group
        for row in rows:
            if group and self._key(group[0]) != self._key(row):
                out.append(self._fold(group))
                group = []
            group.append(row)
        self._group = group
        return out

    def finish(self) -> list[list[Any]]:
        """The last group, folded (empty if nothing is pending)."""
        out = [self._fold(self._group)] if self._group else []
        self._group = []
        return out
