"""The one wiring place: every process's object graph, built from its settings.

Each long-running process is an async context manager here, with every adapter injectable (tests
and benchmarks hand in doubles from ``recsys.testing``; nothing else builds these graphs):

- :func:`consumer` -- ``recsys consume``: a migrated pool, the active model version, the suppression
  list, the latest-recommendations table, the dead-letter store, aiobotocore Kinesis and Firehose
  clients (made and closed here: the consumer never creates its own), the lease table, and the
  :class:`~consumer.app.Consumer` over them.
- :func:`api` -- ``recsys serve`` (and the API of ``recsys run``): its pool, the app
  (:func:`api_app`, whose lifespan enters :func:`api_services`: the model slot and its
  maintenance), uvicorn on the listening socket.
- :func:`running` -- ``recsys run``: one pool and one model handle for the consumer, and the API in
  a supervised child process, on its own loop in a thread, or on the consumer's loop
  (``--api-loop process|own|shared``).

- :mod:`recsys.runtime.jobs` -- the batch jobs (migrate, seed, etl, train, load-vectors,
  import-lab-artifacts, produce, forget): each checks its options, resolves its locations once with
  ``recsys.bootstrap`` and runs its package's function, returning its summary.

Commands are argparse -> settings -> this module -> print.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.runtime import jobs
    from recsys.runtime._api import ApiRunning, api, api_app, api_services
    from recsys.runtime._consumer import DEFAULT, aws_clients, consumer, database
    from recsys.runtime._heap import freeze_heap
    from recsys.runtime._priority import Spawner, lower_priority
    from recsys.runtime._run import API_LOOPS, DEFAULT_API_LOOP, ApiLoop, Running, restart_delay, running

__all__ = [
    "API_LOOPS",
    "DEFAULT",
    "DEFAULT_API_LOOP",
    "ApiLoop",
    "ApiRunning",
    "Running",
    "Spawner",
    "api",
    "api_app",
    "api_services",
    "aws_clients",
    "consumer",
    "database",
    "freeze_heap",
    "jobs",
    "lower_priority",
    "restart_delay",
    "running",
]

# Each name is imported on first use, so a process imports only its own graph: the API child of
# `recsys run` must not import the consumer (its Prometheus metrics would shadow the parent's).
_WHERE = {
    "ApiRunning": "api",
    "api": "api",
    "api_app": "api",
    "api_services": "api",
    "DEFAULT": "consumer",
    "aws_clients": "consumer",
    "consumer": "consumer",
    "database": "consumer",
    "freeze_heap": "heap",
    "Spawner": "priority",
    "lower_priority": "priority",
    "API_LOOPS": "run",
    "DEFAULT_API_LOOP": "run",
    "ApiLoop": "run",
    "Running": "run",
    "restart_delay": "run",
    "running": "run",
}


def __getattr__(name: str) -> Any:
    if name == "jobs":
        return importlib.import_module("recsys.runtime.jobs")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'recsys.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"recsys.runtime._{module}"), name)
