-- A hybrid version's own answer for each customer it holds a vector for: the first items by the
-- customer's vector, without the items they bought, computed by `recsys load-vectors` like the item
-- neighbours (see docs/model.md). GET /recommendations/{id} answers a customer without a streamed
-- answer from here instead of running the scan per request. Keyed by `customer_number` first:
-- `recsys forget` finds the customer's rows by that column.
CREATE TABLE IF NOT EXISTS customer_answers (
    customer_number integer NOT NULL,
    version         text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    item_ids        text[] NOT NULL,
    scores          double precision[] NOT NULL,
    PRIMARY KEY (customer_number, version)
);
