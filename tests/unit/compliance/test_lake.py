"""The lake part of ``forget`` on a local lake: republish, in-place rewrite, crash and re-run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from compliance.lake import lake_changes
from etl.pipeline import run_etl
from etl.seed import seed
from infra.lake import LakeRun, complete_runs, latest_run, manifest_key, read_run
from infra.objectstore import LocalStore


@pytest.fixture
def lake(tmp_path: Path) -> tuple[LocalStore, int, int]:
    """Two runs (older: a file per customer; latest: one file) of a small seeded shop."""
    shop = f"sqlite:///{tmp_path / 'shop.db'}"
    seed(shop, 0.1)
    root = str(tmp_path / "lake")
    run_etl(shop, root, partition_by="customerNumber")
    run_etl(shop, root)
    store = LocalStore(root)
    numbers = sorted(set(read_run(store, latest_run(store)).column("customerNumber").to_pylist()))
    return store, numbers[0], numbers[1]


def _rows_of(store: LocalStore, customer: int) -> int:
    total = 0
    for key in store.list(""):
        if key.endswith(".parquet"):
            column = pq.read_table(store.root / key, columns=["customerNumber"]).column("customerNumber")
            total += int(pc.sum(pc.equal(column, customer)).as_py() or 0)
    return total


def test_latest_run_is_republished_and_older_runs_rewritten(lake: tuple[LocalStore, int, int]) -> None:
    store, target, other = lake
    before = latest_run(store)
    other_rows = _rows_of(store, other)
    target_rows = _rows_of(store, target)
    assert target_rows > 0

    planned = lake_changes(store, target, apply=False)
    assert sum(c.rows for c in planned) == target_rows and _rows_of(store, target) == target_rows

    done = lake_changes(store, target, apply=True)
    assert sum(c.rows for c in done) == target_rows
    after = latest_run(store)
    assert after.run_id > before.run_id and after.options["rewritten_from"] == before.run_id
    assert before.run_id not in complete_runs(store)
    assert not any(k.startswith(f"ratings_ml_training/runs/{before.run_id}/") for k in store.list(""))
    assert _rows_of(store, target) == 0
    assert _rows_of(store, other) == other_rows
    assert read_run(store, after).num_rows == after.row_count
    assert lake_changes(store, target, apply=True) == []  # idempotent


class CrashOnDelete(LocalStore):
    """A store whose first delete of a matching key fails: the process dies there."""

    def __init__(self, root: str, when: Callable[[str], bool]) -> None:
        super().__init__(root)
        self.when = when
        self.crashed = False

    def delete(self, keys: Sequence[str]) -> None:
        if not self.crashed and any(self.when(k) for k in keys):
            self.crashed = True
            raise OSError("killed")
        super().delete(keys)


def test_a_crash_after_the_publish_is_completed_by_running_again(lake: tuple[LocalStore, int, int]) -> None:
    store, target, other = lake
    other_rows = _rows_of(store, other)
    old = latest_run(store).run_id
    crashing = CrashOnDelete(str(store.root), lambda key: key == manifest_key(old))
    with pytest.raises(OSError, match="killed"):
        lake_changes(crashing, target, apply=True)
    published = latest_run(store)
    assert published.options["rewritten_from"] == old  # readers already see the clean run
    assert (
        int(pc.sum(pc.equal(read_run(store, published).column("customerNumber"), target)).as_py() or 0) == 0
    )
    assert _rows_of(store, target) > 0  # the old run still holds the rows
    lake_changes(store, target, apply=True)
    assert _rows_of(store, target) == 0 and _rows_of(store, other) == other_rows
    assert latest_run(store).run_id == published.run_id


def test_a_crash_inside_an_in_place_rewrite_is_finished_by_running_again(
    lake: tuple[LocalStore, int, int],
) -> None:
    store, target, other = lake
    older = complete_runs(store)[0]
    other_rows = _rows_of(store, other)
    crashing = CrashOnDelete(str(store.root), lambda key: f"customerNumber={target}/" in key)
    with pytest.raises(OSError, match="killed"):
        lake_changes(crashing, target, apply=True)
    assert older not in complete_runs(store)  # hidden, not half-rewritten
    lake_changes(store, target, apply=True)
    assert older in complete_runs(store)  # made complete again
    assert not [k for k in store.list("") if k.endswith(".forget-pending")]
    run = latest_run(store)  # the published run is clean too
    assert _rows_of(store, target) == 0 and _rows_of(store, other) == other_rows
    assert run.row_count == read_run(store, run).num_rows
    restored = LakeRun.from_json(store.get_bytes(manifest_key(older)), older)
    assert restored.row_count == read_run(store, restored).num_rows
    assert not any(f"customerNumber={target}/" in k for k in restored.files)
