"""The customer's rows in the data lake (the training data), removed the way the ETL publishes.

Every run of the dataset is searched: the complete runs (with a manifest) and incomplete ones (files
of a crashed or running job), since every copy of the rows counts, not only the served one.

- **The latest run** (the one readers follow) is republished as a NEW run: each affected file is
  rewritten without the customer's rows, unaffected files are copied, then the manifest and the
  pointer are written (``recsys.infra.lake.publish_run``), then the old run is deleted, manifest
  first. A reader sees the old run or the new one, never a mix: the same guarantee as an ETL run,
  by the same code. In-place rewriting could not give it: several object PUTs are not one atomic
  step, so a reader could see some files rewritten, others not, and a manifest whose row count is
  wrong. A new run id also sorts after the old one, so the pointer only moves forward.
- **Older complete runs** are not read by anyone following the pointer; they are hidden (manifest
  deleted), rewritten in place, and made complete again with their new row count and files. During
  the rewrite such a run is invisible rather than half-rewritten.
- **Incomplete runs** are invisible already; their affected files are rewritten in place.

A file left with no rows is deleted (with ``partition_by = customerNumber`` that is the customer's
own file); a republished run that would have no file at all gets one empty file carrying the schema,
as the ETL does for an empty source. A crash part-way is repaired by running the command again.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.compliance.report import Change
from recsys.core.errors import NotFoundError
from recsys.infra.lake import (
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
from recsys.infra.logs import get_logger
from recsys.infra.objectstore import ObjectStore

__all__ = ["CUSTOMER_COLUMN", "lake_changes"]

log = get_logger(__name__)
CUSTOMER_COLUMN = "customerNumber"


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


def _scan(store: ObjectStore, keys: list[str], customer: int, workdir: Path) -> dict[str, int]:
    """Rows of the customer per file (files without any are left out)."""
    found: dict[str, int] = {}
    local = workdir / "scan.parquet"
    for key in keys:
        if not key.endswith(".parquet"):
            continue
        store.download(key, local)
        rows = _customer_rows(local, customer)
        if rows:
            found[key] = rows
    local.unlink(missing_ok=True)
    return found


def _republish(
    store: ObjectStore, run: LakeRun, affected: dict[str, int], customer: int, *, workdir: Path, now: datetime
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
        row_count=run.row_count - sum(affected.values()),
        files=files,
        options={**run.options, "rewritten_from": run.run_id, "rewritten_by": "recsys forget"},
    )
    publish_run(store, new_run)
    store.delete([manifest_key(run.run_id, run.dataset)])  # readers stop seeing it first
    store.delete(sorted(set(run.files) | set(store.list(old_prefix))))
    log.info("lake: run %s republished as %s without one customer", run.run_id, new_id)
    return new_id


def _rewrite_in_place(store: ObjectStore, keys: dict[str, int], customer: int, workdir: Path) -> list[str]:
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
    try:
        latest: str | None = latest_run(store, dataset).run_id
    except NotFoundError:
        latest = None
    changes: list[Change] = []
    with tempfile.TemporaryDirectory(prefix="recsys-forget-") as tmp:
        workdir = Path(tmp)
        for run_id in sorted(set(complete) | set(files_by_run)):
            if run_id in complete:
                run = LakeRun.from_json(store.get_bytes(manifest_key(run_id, dataset)), run_id)
                keys = list(run.files)
            else:
                run, keys = None, files_by_run.get(run_id, [])
            affected = _scan(store, keys, customer, workdir)
            if not affected:
                continue
            rows = sum(affected.values())
            where = f"{dataset} run {run_id} ({len(affected)} of {len(keys)} file(s))"
            if run is not None and run_id == latest:
                action = "republish as a new run without them, switch the pointer, delete the old run"
                if apply:
                    new_id = _republish(
                        store, run, affected, customer, workdir=workdir, now=now or datetime.now(UTC)
                    )
                    action = f"republished as run {new_id}; pointer switched; old run deleted"
            elif run is not None:
                action = "hide the run, rewrite its files in place, publish its manifest again"
                if apply:
                    store.delete([manifest_key(run_id, dataset)])
                    emptied = set(_rewrite_in_place(store, affected, customer, workdir))
                    fixed = replace(
                        run,
                        row_count=run.row_count - rows,
                        files=[k for k in run.files if k not in emptied],
                    )
                    store.put_bytes(manifest_key(run_id, dataset), fixed.to_json())
                    action = "rewritten in place (hidden meanwhile); manifest published again"
            else:
                action = "rewrite the files of this incomplete run in place"
                if apply:
                    _rewrite_in_place(store, affected, customer, workdir)
                    action = "rewritten in place (incomplete run, invisible to readers)"
            changes.append(Change("lake", where, rows, action))
    return changes
