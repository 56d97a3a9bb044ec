-- The latest streamed recommendations per customer: written by the consumer, read by the API.
-- A row is replaced only by a newer event (event_time, then event_id), so replays never go backwards.
CREATE TABLE IF NOT EXISTS latest_recommendations (
    customer_number   integer PRIMARY KEY,
    recommended_items jsonb NOT NULL,
    similar_items     jsonb NOT NULL,
    model_version     text NOT NULL,
    event_id          text NOT NULL,
    event_time        timestamptz NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now()
);
