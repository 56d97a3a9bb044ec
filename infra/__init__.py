"""Shared adapters: PostgreSQL pool and migrations, AWS clients, object stores, logging."""
