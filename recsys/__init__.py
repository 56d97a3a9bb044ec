"""Streaming product recommendations.

Packages, by layer (entry points -> adapters -> core):

- ``recsys.cli`` / ``recsys.commands``: the ``recsys`` console script.
- ``recsys.bootstrap``: the one wiring place per process.
- ``service``, ``consumer``, ``etl``: the API, the stream consumer, the batch ETL.
- ``model_store``: the two-tower model, artifacts, pgvector index, the recommender.
- ``infra``: shared adapters (PostgreSQL pool and migrations, AWS clients, logging).
- ``core``: the pure domain: no I/O, no torch.
"""

__version__ = "0.1.0"
