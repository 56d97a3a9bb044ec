"""The pure domain: event schema, recommendation types and ranking, error types, ports.

Nothing here imports an I/O library, torch, numpy, FastAPI or an AWS SDK (an import-linter
contract enforces it).
"""
