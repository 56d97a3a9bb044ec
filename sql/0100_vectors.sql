-- Model versions and their vectors (the model store). See docs/model.md.
--
-- Each loaded version gets its own pair of tables, created by `recsys load-vectors`:
--   item_emb__<tag>(id varchar PRIMARY KEY, embedding vector(32))  + HNSW index (vector_ip_ops)
--   user_emb__<tag>(id integer PRIMARY KEY, embedding vector(32))
-- and one row here with everything a serving process needs (weights, feature parameters), so the
-- consumer and the API need only the database. Exactly one row is active; the loader switches it,
-- and re-points the lab-compatible views item_emb / user_emb, in one transaction.
CREATE TABLE IF NOT EXISTS model_versions (
    version       text PRIMARY KEY,
    item_table    text NOT NULL,
    user_table    text NOT NULL,
    dimension     integer NOT NULL CHECK (dimension > 0),
    items         integer NOT NULL,
    users         integer NOT NULL,
    manifest      jsonb NOT NULL,
    model_config  jsonb NOT NULL,
    user_features jsonb NOT NULL,
    item_features jsonb NOT NULL,
    weights       bytea NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    active        boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_active ON model_versions (active) WHERE active;

-- Item-to-item neighbours do not change within a version: exact top-N computed at load time.
CREATE TABLE IF NOT EXISTS item_neighbours (
    version       text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    id            varchar NOT NULL,
    neighbour_ids text[] NOT NULL,
    scores        real[] NOT NULL,
    PRIMARY KEY (version, id)
);

-- The fallback: items by damped mean rating of the training data, most popular first.
CREATE TABLE IF NOT EXISTS popular_items (
    version text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    rank    integer NOT NULL,
    id      varchar NOT NULL,
    score   double precision NOT NULL,
    ratings integer NOT NULL,
    PRIMARY KEY (version, rank)
);

-- The lab's table names, as views over the active version (empty until a version is loaded).
CREATE OR REPLACE VIEW item_emb AS
    SELECT NULL::varchar AS id, NULL::vector(32) AS embedding WHERE false;
CREATE OR REPLACE VIEW user_emb AS
    SELECT NULL::integer AS id, NULL::vector(32) AS embedding WHERE false;
