"""The FastAPI sidecar: routes, schemas, auth, metrics.

``create_app(config, services)`` in :mod:`service.app` is the entry point (``recsys.runtime`` builds
the ``Services`` it is handed);
HTTP status mapping of the error hierarchy lives only in :mod:`service.errors`.
"""
