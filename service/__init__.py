"""The FastAPI sidecar: routes, schemas, auth, metrics.

``create_app(settings, pool=..., recommender=...)`` in :mod:`service.app` is the entry point;
HTTP status mapping of the error hierarchy lives only in :mod:`service.errors`.
"""
