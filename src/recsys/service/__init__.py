"""The FastAPI sidecar: routes, schemas, auth, metrics."""
