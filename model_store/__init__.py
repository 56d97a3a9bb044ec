"""The two-tower model, training, artifacts, the pgvector index and the recommender."""
