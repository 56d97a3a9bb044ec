"""Streaming product recommendations.

Packages, by layer (entry points -> adapters -> core):

- ``recsys.cli`` / ``recsys.commands``: the ``recsys`` console script.
- ``recsys.bootstrap``: the one wiring place per process.
- ``recsys.service``, ``recsys.consumer``, ``recsys.etl``: the API, the stream consumer, the batch ETL.
- ``recsys.model_store``: the two-tower model, artifacts, pgvector index, the recommender.
- ``recsys.infra``: shared adapters (PostgreSQL pool and migrations, AWS clients, logging).
- ``recsys.core``: the pure domain: no I/O, no torch.
"""

__version__ = "0.1.0"
