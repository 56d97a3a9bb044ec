"""Where the time of one ``GET /recommendations/{id}`` goes: pyinstrument on the API's event loop.

The real app (its own pool and model handle, as ``recsys serve`` builds it) on uvicorn in this
process; the same closed-loop client as ``bench api`` (another process, 64 connections) keeps it
busy while pyinstrument samples this process's main thread every 0.2 ms of its CPU time (so time
the machine gave to other processes, or spent waiting for the database, is left out). The CPU time of
many requests adds up to the profile of one: printed as pyinstrument's call tree (frames under 2 % of
the time left out) for the stream path and for the model path, and written to
``bench/results/api_profile-<path>.txt``. Run on the code before a change to see what it moved.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._harness import RESULTS, bench_stack, prepared_model

CONNECTIONS = 64


async def _profile(prepared: Any, duration: float) -> dict[str, str]:
    from pyinstrument import Profiler
    from pyinstrument.stack_sampler import get_stack_sampler

    from bench.api import _customers, _serve, _store_answers, drive
    from infra.pg import create_pool
    from recsys.runtime import api_app, freeze_heap
    from recsys.settings import Settings

    pool = await create_pool(prepared.database_url, min_size=1, max_size=2)
    try:
        known = await _customers(pool)
        stream, model = known[::2], known[1::2]
        await _store_answers(pool, stream, prepared.version)
        await pool.execute("DELETE FROM latest_recommendations WHERE customer_number = ANY($1)", model)
    finally:
        await pool.close()
    app = api_app(Settings(database_url=prepared.database_url, port=0))
    out: dict[str, str] = {}
    async with _serve(app) as url:
        await asyncio.wait_for(app.state.services.model.wait_loaded(), 60)
        freeze_heap()  # as `recsys serve` does once it is up
        for name, customers in (("stream", stream), ("model", model)):
            paths = [f"/recommendations/{c}" for c in customers]
            await drive(url, paths, 1.0, 0.5, connections=CONNECTIONS)  # warm up
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            get_stack_sampler().timer_func = time.thread_time  # this thread's CPU time, not the wall's
            profiler.start()
            result = await drive(url, paths, duration, 0.5, connections=CONNECTIONS)
            profiler.stop()
            header = (
                f"# {name} answers: {result['requests']} requests in {duration:g} s "
                f"({result['rps']:.0f} req/s, p99 {result['p99_ms']:.1f} ms) at {CONNECTIONS} connections\n"
            )
            out[name] = header + profiler.output_text(unicode=False, color=False, show_all=False)
    return out


def _trimmed(text: str, share: float = 0.02) -> str:
    """The call tree without frames under ``share`` of the total (pyinstrument prints every one)."""
    lines = text.splitlines()
    total = None
    kept = []
    for line in lines:
        parts = line.strip("|- `").split()
        if parts and total is None and parts[0].replace(".", "", 1).isdigit():
            total = float(parts[0])
        if total and parts and parts[0].replace(".", "", 1).isdigit() and float(parts[0]) < share * total:
            continue
        kept.append(line)
    return "\n".join(kept)


def main(quick: bool) -> None:
    bench_stack()
    prepared = prepared_model(1.0)
    import uvloop  # the loop `recsys serve` runs on

    profiles = uvloop.run(_profile(prepared, 3.0 if quick else 8.0))
    RESULTS.mkdir(exist_ok=True)
    for name, text in profiles.items():
        trimmed = _trimmed(text)
        print(trimmed)
        (RESULTS / f"api_profile-{name}.txt").write_text(trimmed + "\n")
