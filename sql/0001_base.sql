-- The pgvector extension every later migration relies on.
CREATE EXTENSION IF NOT EXISTS vector;
