-- The HNSW search width each version serves with, chosen by the loader (`recsys load-vectors`):
-- the smallest ef_search whose recall@10 against the exact top-10, measured on a sample of the
-- version's own query vectors right after the index is built, reaches the recall target
-- (RECSYS_RECALL_TARGET, default 0.98). NULL for versions loaded before this column: the
-- recommender then uses 100. RECSYS_EF_SEARCH, when set, overrides it. See docs/model.md.
ALTER TABLE model_versions
    ADD COLUMN IF NOT EXISTS ef_search integer CHECK (ef_search BETWEEN 10 AND 1000),
    ADD COLUMN IF NOT EXISTS ef_search_recall real;
