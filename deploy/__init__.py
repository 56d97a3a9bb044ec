"""Deployment templates and tools; not part of the ``recsys`` package."""
