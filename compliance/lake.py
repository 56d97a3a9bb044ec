"""The customer's rows in the data lake (the training data), removed the way the ETL publishes.

Every run of the dataset is searched: the complete runs (with a manifest) and incomplete ones (files
of a crashed or running job), since every copy of the rows counts, not only the served one.

- **The latest run** (the one readers follow) is republished as a NEW run: each affected file is
  rewritten without the customer's rows, unaffected files are copied, then the manifest and the
  pointer are written (``infra.lake.publish_run``), then the old run is deleted, manifest
  first. A reader sees the old run or the new one, never a mix: the same guarantee as an ETL run,
  by the same code. In-place rewriting could not give it: several object PUTs are not one atomic
  step, so a reader could see some files rewritten, others not, and a manifest whose row count is
  wrong. A new run id also sorts after the old one, so the pointer only moves forward. A crash
  before the old run is gone is finished by the next run of the command, which deletes the run a
  successor names in ``rewritten_from``.
- **Older complete runs** are not read by anyone following the pointer; they are hidden (manifest
  deleted), rewritten in place, and made complete again with their new row count and files. During
  the rewrite such a run is invisible rather than half-rewritten; its finished manifest is written
  aside first (``<run>.json.forget-pending``, which readers ignore), so a crash mid-rewrite is
  finished, manifest restored, by the next run of the command.
- **Incomplete runs** are invisible already; their affected files are rewritten in place.

A file left with no rows is deleted (with ``partition_by = customerNumber`` that is the customer's
own file); a republished run that would have no file at all gets one empty file carrying the schema,
as the ETL does for an empty source. A crash part-way is repaired by running the command again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compliance.report import Change
from core.errors import NotFoundError
from infra.lake import (
    MANIFESTS,
    RUNS,
    SCHEMA,
    TRAINING_DATASET,
    LakeRun,
    complete_runs,
    latest_run,
    manifest_key,
    new_run_id,
    publish_run,
    run_prefix,
)
from infra.logs import get_logger
from infra.objectstore import ObjectStore

__all__ = ["CUSTOMER_COLUMN", "lake_changes"]

log = get_logger(__name__)
CUSTOMER_COLUMN = "customerNumber"
PENDING = ".forget-pending"  # <manifest>.json.forget-pending: an in-place rewrite's finished manifest


def _customer_rows(path: Path, customer: int) -> int:
    parquet = pq.ParquetFile(path)
    try:
        if CUSTOMER_COLUMN not in parquet.schema_arrow.names:
            return 0
        column = parquet.read(columns=[CUSTOMER_COLUMN]).column(CUSTOMER_COLUMN)
    finally:
        parquet.close()
    return int(pc.sum(pc.equal(column, customer)).as_py() or 0)


def _without(path: Path, customer: int) -> pa.Table:
    table = pq.read_table(path)
    return table.filter(pc.invert(pc.fill_null(pc.equal(table.column(CUSTOMER_COLUMN), customer), False)))


def _write(store: ObjectStore, key: str, table: pa.Table, workdir: Path) -> None:
    local = workdir / "rewrite.parquet"
    pq.write_table(table, local, compression="snappy")
    store.put_file(key, local)
    local.unlink()


def _scan(store: ObjectStore, keys: list[str], customer: int, workdir: Path) -> dict[str, tuple[int, int]]:
    """(rows of the customer, all rows) per file; files without the customer are left out."""
    found: dict[str, tuple[int, int]] = {}
    local = workdir / "scan.parquet"
    for key in keys:
        if not key.endswith(".parquet") or not store.exists(key):
            continue
        store.download(key, local)
        rows = _customer_rows(local, customer)
        if rows:
            found[key] = (rows, pq.ParquetFile(local).metadata.num_rows)
    local.unlink(missing_ok=True)
    return found


def _republish(
    store: ObjectStore,
    run: LakeRun,
    affected: dict[str, tuple[int, int]],
    customer: int,
    *,
    workdir: Path,
    now: datetime,
) -> str:
    new_id = new_run_id(now)
    old_prefix, new_prefix = run_prefix(run.run_id, run.dataset), run_prefix(new_id, run.dataset)
    local = workdir / "copy.parquet"
    files: list[str] = []
    for key in run.files:
        target = new_prefix + key[len(old_prefix) :] if key.startswith(old_prefix) else new_prefix + key
        store.download(key, local)
        if key in affected:
            kept = _without(local, customer)
            if kept.num_rows:
                _write(store, target, kept, workdir)
                files.append(target)
        else:
            store.put_file(target, local)
            files.append(target)
    if not files:
        target = f"{new_prefix}part-00000.parquet"
        _write(store, target, SCHEMA.empty_table(), workdir)
        files.append(target)
    new_run = replace(
        run,
        run_id=new_id,
        created_at=now,
        row_count=run.row_count - sum(rows for rows, _ in affected.values()),
        files=files,
        options={**run.options, "rewritten_from": run.run_id, "rewritten_by": "recsys forget"},
    )
    publish_run(store, new_run)
    store.delete([manifest_key(run.run_id, run.dataset)])  # readers stop seeing it first
    store.delete(sorted(set(run.files) | set(store.list(old_prefix))))
    log.info("lake: run %s republished as %s without one customer", run.run_id, new_id)
    return new_id


def _rewrite_in_place(store: ObjectStore, keys: Iterable[str], customer: int, workdir: Path) -> list[str]:
    """Rewrite affected files; return the keys that were emptied and deleted."""
    local = workdir / "inplace.parquet"
    emptied: list[str] = []
    for key in sorted(keys):
        store.download(key, local)
        kept = _without(local, customer)
        if kept.num_rows:
            _write(store, key, kept, workdir)
        else:
            store.delete([key])
            emptied.append(key)
    return emptied


def lake_changes(
    store: ObjectStore,
    customer: int,
    *,
    apply: bool,
    dataset: str = TRAINING_DATASET,
    now: datetime | None = None,
) -> list[Change]:
    """The customer's rows in every run of ``dataset``; with ``apply`` they are removed (see above)."""
    runs_root = f"{dataset}/{RUNS}/"
    files_by_run: dict[str, list[str]] = {}
    for key in store.list(runs_root):
        files_by_run.setdefault(key[len(runs_root) :].split("/", 1)[0], []).append(key)
    complete = complete_runs(store, dataset)
    manifests = f"{dataset}/{MANIFESTS}/"
    pending = {
        k[len(manifests) : -len(".json" + PENDING)]
        for k in store.list(manifests)
        if k.endswith(".json" + PENDING)
    }
    superseded: dict[str, str] = {}  # old run -> the run republished from it
    for run_id in complete:
        source = LakeRun.from_json(store.get_bytes(manifest_key(run_id, dataset)), run_id).options.get(
            "rewritten_from"
        )
        if isinstance(source, str):
            superseded[source] = run_id
    try:
        latest: str | None = latest_run(store, dataset).run_id
    except NotFoundError:
        latest = None
    changes: list[Change] = []
    with tempfile.TemporaryDirectory(prefix="recsys-forget-") as tmp:
        workdir = Path(tmp)
        for run_id in sorted(set(complete) | set(files_by_run) | pending):
            final_key = manifest_key(run_id, dataset)
            resumed = run_id not in complete and run_id in pending  # an interrupted rewrite
            run: LakeRun | None = None
            if run_id in complete or resumed:
                key = final_key if run_id in complete else final_key + PENDING
                run = LakeRun.from_json(store.get_bytes(key), run_id)
                # stray files under the run's folder (an interrupted rewrite's) hold rows too
                keys = sorted(set(run.files) | set(files_by_run.get(run_id, [])))
            else:
                keys = files_by_run.get(run_id, [])
            affected = _scan(store, keys, customer, workdir)
            if not affected and not resumed:
                continue
            rows = sum(n for n, _ in affected.values())
            where = f"{dataset} run {run_id} ({len(affected)} of {len(keys)} file(s))"
            successor = superseded.get(run_id)
            if run is not None and successor is not None and run_id != latest and not resumed:
                action = f"delete: already republished as run {successor} (an interrupted republish)"
                if apply:
                    store.delete([final_key])
                    store.delete(files_by_run.get(run_id, []))
                    action = f"deleted: already republished as run {successor}"
            elif run is not None and run_id == latest and not resumed:
                action = "republish as a new run without them, switch the pointer, delete the old run"
                if apply:
                    new_id = _republish(
                        store, run, affected, customer, workdir=workdir, now=now or datetime.now(UTC)
                    )
                    action = f"republished as run {new_id}; pointer switched; old run deleted"
            elif run is not None:
                action = "hide the run, rewrite its files in place, publish its manifest again"
                if resumed:
                    action = "finish an interrupted rewrite, publish the run's manifest again"
                if apply:
                    if not resumed:
                        emptied = {k for k, (n, total) in affected.items() if n == total}
                        fixed = replace(
                            run,
                            row_count=run.row_count - rows,
                            files=[k for k in run.files if k not in emptied],
                        )
                        # the finished manifest is kept aside first: a crash below is finished by a re-run
                        store.put_bytes(final_key + PENDING, fixed.to_json())
                        store.delete([final_key])
                        run = fixed
                    _rewrite_in_place(store, affected, customer, workdir)
                    store.put_bytes(final_key, run.to_json())
                    store.delete([final_key + PENDING])
                    action = "rewritten in place (hidden meanwhile); manifest published again"
            else:
                action = "rewrite the files of this incomplete run in place"
                if apply:
                    _rewrite_in_place(store, affected, customer, workdir)
                    action = "rewritten in place (incomplete run, invisible to readers)"
            changes.append(Change("lake", where, rows, action))
    return changes
