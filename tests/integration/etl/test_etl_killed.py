"""kill -9 in the middle of `recsys etl`: the lake keeps serving the previous complete run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from etl.pipeline import run_etl
from etl.seed import seed
from infra.lake import complete_runs, latest_run, manifest_key, read_run, run_prefix
from infra.objectstore import LocalStore
from recsys.stack import StackInfo


def test_a_killed_run_is_invisible_and_cleaned_up_later(
    pg_source: str, stack: StackInfo, tmp_path: Path
) -> None:
    seed(pg_source, scale=10, seed=3)  # ~100k ratings: ~1000 chunks of 100 rows below
    lake = tmp_path / "lake"
    store = LocalStore(str(lake))
    previous = run_etl(pg_source, str(lake))

    env = {
        **os.environ,
        **stack.env(),
        "RECSYS_ETL__CHUNK_ROWS": "100",
        "RECSYS_ETL__FILE_MAX_ROWS": "1000",
        "RECSYS_LOG_FORMAT": "text",
    }
    cmd = [sys.executable, "-m", "recsys.cli", "etl", "--source-url", pg_source, "--lake", str(lake)]
    # The child logs a progress line per chunk to a pipe we stop reading: once the pipe is full it
    # blocks, so it cannot finish behind our back between the moment we look and the kill.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    run_id = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if match := re.search(r"etl run (\S+):", line):
                run_id = match.group(1)
            files = re.search(r"files=(\d+)", line)
            if run_id and files and int(files.group(1)) >= 1 and list(store.list(run_prefix(run_id))):
                break
        else:
            raise AssertionError(f"the ETL ended before writing a part file (exit {proc.wait()})")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert run_id is not None and run_id > previous.run_id

    # the killed run wrote files but never its manifest: readers still get the previous run, whole
    assert list(store.list(run_prefix(run_id)))
    assert not store.exists(manifest_key(run_id))
    current = latest_run(store)
    assert current.run_id == previous.run_id
    assert read_run(store, current).num_rows == previous.rows > 50_000

    # a later run publishes, and its retention pass removes the orphan and the old run
    later = datetime.now(UTC) + timedelta(days=2)
    summary = run_etl(pg_source, str(lake), retention_days=1, clock=lambda: later)
    assert sorted(summary.deleted_runs) == sorted([previous.run_id, run_id])
    assert complete_runs(store) == [summary.run_id] and latest_run(store).run_id == summary.run_id
    assert not list(store.list(run_prefix(run_id)))
