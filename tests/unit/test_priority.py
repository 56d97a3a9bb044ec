"""The consumer's threads below the API in CPU priority (``recsys.runtime._priority``), in a process
of its own (a lowered priority cannot be raised again: never in the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys, tempfile, threading

    from recsys.runtime._priority import Spawner, lower_priority

    def nice(tid=0):
        return os.getpriority(os.PRIO_PROCESS, tid)

    spawner = Spawner()  # made first: its thread keeps the process's priority
    hold = threading.Event()
    before = threading.Thread(target=hold.wait)
    before.start()
    lowered = lower_priority(7, keep={spawner.native_id})
    seen = {}
    after = threading.Thread(target=lambda: seen.setdefault("after", nice(threading.get_native_id())))
    after.start()
    after.join()
    report = lambda code: f"import os, sys; print(os.getpriority(os.PRIO_PROCESS, 0)); sys.exit({code})"

    async def main():
        with tempfile.TemporaryFile() as out:
            child = await spawner.spawn([sys.executable, "-c", report(3)], stdout=out)
            code = await child.wait()
            again = await child.wait()
            out.seek(0)
            spawned = int(out.read())
        direct = subprocess.run([sys.executable, "-c", report(0)], capture_output=True, text=True)
        return code, again, spawned, int(direct.stdout)

    code, again, spawned, direct = asyncio.run(main())
    hold.set()
    print(json.dumps({
        "lowered": lowered, "main": nice(), "before": nice(before.native_id),
        "spawner": nice(spawner.native_id), "after": seen["after"], "spawned": spawned,
        "direct": direct, "code": code, "again": again, "off": lower_priority(0),
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_every_thread_but_the_spawners_is_lowered_and_its_children_are_not() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base >= 7:
        pytest.skip(f"this process already runs at nice {base}")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["lowered"] >= 2  # the main thread and the one started before
    assert (got["main"], got["before"], got["after"]) == (7, 7, 7)  # a later thread inherits it
    assert got["spawner"] == base
    assert got["spawned"] == base, "a child started by the spawner runs at the process's first priority"
    assert got["direct"] == 7, "a child started from a lowered thread is lowered too"
    assert (got["code"], got["again"]) == (3, 3)  # Child.wait: the exit status, also once reaped
    assert got["off"] == 0  # 0: nothing changes
