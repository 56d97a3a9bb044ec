-- Compliance: the customers whose events the consumer must drop, and the record of every forget run.
--
-- suppressed_customers is read by recsys.infra.suppression (a cached set, refreshed periodically);
-- `recsys forget N --suppress` adds a row. Deleting a row lifts the suppression.
CREATE TABLE IF NOT EXISTS suppressed_customers (
    customer_number integer PRIMARY KEY,
    suppressed_at   timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL
);

-- One row per `recsys forget` run that was not a dry run: who, when, which stores, how many rows or
-- objects changed. Never the deleted data itself; the customer number is kept as the request's subject.
CREATE TABLE IF NOT EXISTS forget_audit (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_number integer NOT NULL,
    actor           text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    suppressed      boolean NOT NULL,
    changed         boolean NOT NULL,       -- false: a repeat run that found nothing left
    stores          jsonb NOT NULL,         -- {store: {"rows": n, "objects": n, "status": "..."}}
    out_of_scope    text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS forget_audit_customer ON forget_audit (customer_number);
