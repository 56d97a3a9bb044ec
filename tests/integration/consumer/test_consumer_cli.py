"""The commands as a user drives them: `recsys produce` from the seeded shop, mistakes exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from consumer.kpl import deaggregate
from infra.aws import sync_client
from recsys.stack import StackInfo


def _recsys(args: list[str], stack: StackInfo, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), "RECSYS_STATE_DIR": str(tmp)}
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_produce_sends_events_drawn_from_the_shop(stack: StackInfo, tmp_path: Path) -> None:
    from etl.seed import seed
    from etl.source import load_catalog

    seed(stack.source_url)
    catalog = load_catalog(stack.source_url)
    stream = f"cli-{uuid.uuid4().hex[:8]}"
    result = _recsys(
        ["produce", "--stream", stream, "--count", "120", "--aggregate", "--shards", "2"], stack, tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "sent 120 events" in result.stdout
    kinesis = sync_client("kinesis")
    events: list[Any] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )
        for rec in kinesis.get_records(ShardIterator=it["ShardIterator"], Limit=1000)["Records"]:
            events.extend(json.loads(u.data) for u in deaggregate(rec["Data"]))
    assert len(events) == 120
    customers = {c.customer_number for c in catalog.customers}
    products = set(catalog.product_codes)
    assert all(e["customer_number"] in customers for e in events)
    assert all(item["product_code"] in products for e in events for item in e["browse_history"])


def test_user_mistakes_exit_2_with_one_line(stack: StackInfo, tmp_path: Path) -> None:
    both = _recsys(["produce", "--stream", "s", "--count", "5", "--duration", "1"], stack, tmp_path)
    assert both.returncode == 2 and "exactly one of --count" in both.stderr
    bad_position = _recsys(
        ["consume", "--stream", "s", "--initial-position", "YESTERDAY", "--database-url", stack.database_url],
        stack,
        tmp_path,
    )
    assert bad_position.returncode == 2, bad_position.stderr
    assert "TRIM_HORIZON, LATEST or AT_TIMESTAMP" in bad_position.stderr
    assert "Traceback" not in bad_position.stderr
