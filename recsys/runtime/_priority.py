"""The consumer's CPU priority below the API's, when they share a task's CPUs.

A request of the API waits for a CPU whenever the consumer's batches hold them: on a 2-vCPU task
draining a backlog, that is the API's whole tail (``python -m bench api``: p99 several times the API
alone). The consumer is a throughput job with a lag alarm; the API answers people. So the consumer
runs at ``RECSYS_CONSUMER__NICE`` (default 10: under full contention the scheduler gives it about a
tenth of what it gives a process at 0, and all of what the API leaves idle), and the API at 0.

Linux keeps a nice value per thread, and a thread or a child process starts with its creator's:
:func:`lower_priority` sets every thread of this process (and so every thread and child they start
later), except the threads named in ``keep``. ``recsys run`` starts its API child from a
:class:`Spawner` thread left at the process's first priority: a process cannot raise its priority
back without ``CAP_SYS_NICE``, so the API must not be started from a lowered thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import threading
from collections.abc import Collection, Sequence
from typing import Any

from infra.logs import get_logger

__all__ = ["Child", "Spawner", "lower_priority"]

log = get_logger(__name__)


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's priority, which its threads share
        return [0]


def lower_priority(nice: int, *, keep: Collection[int] = ()) -> int:
    """Every thread of this process but ``keep`` (native thread ids) to nice ``nice`` at least;
    returns how many threads were lowered. 0 or an unsupported platform: nothing changes."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return 0
    lowered = 0
    for _ in range(2):  # a thread started during the first pass by a thread not yet lowered
        for tid in _threads():
            if tid in keep:
                continue
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    lowered += 1
            except OSError:  # the thread ended meanwhile
                continue
    if lowered:
        log.info("consumer threads at nice %d (RECSYS_CONSUMER__NICE); the API keeps its priority", nice)
    return lowered


class Child:
    """A child process started by a :class:`Spawner`, awaited on the event loop (a pidfd: no thread)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        code = self._popen.poll()
        if code is not None:
            return code
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): a thread waits
            return await asyncio.to_thread(self._popen.wait)
        try:
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        return self._popen.wait()

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def kill(self) -> None:
        self._popen.kill()


class Spawner:
    """One thread, kept at the priority the process had when it was made, that starts children."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recsys-spawner")
        self.native_id = self._pool.submit(threading.get_native_id).result()

    async def spawn(self, args: Sequence[str], **popen: Any) -> Child:
        loop = asyncio.get_running_loop()
        started = await loop.run_in_executor(self._pool, lambda: subprocess.Popen(args, **popen))
        return Child(started)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._pool.shutdown(wait=False)
