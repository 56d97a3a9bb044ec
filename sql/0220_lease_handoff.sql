-- Graceful lease handoff and load-based balancing (consumer/leases.py, core/leases.py).
-- handoff_to: a worker asked the owner for this lease; the owner finishes its batch, checkpoints and
--             writes owner = handoff_to in one conditional update (no duplicates on a planned move).
-- load_rps:   records/s the owner read from this shard, written with every renewal.
-- owner_cpu:  the owner's process CPU (fraction of one core), NULL until it has warmed up.
ALTER TABLE kinesis_leases
    ADD COLUMN IF NOT EXISTS handoff_to  text,
    ADD COLUMN IF NOT EXISTS handoff_at  timestamptz,
    ADD COLUMN IF NOT EXISTS load_rps    double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS owner_cpu   double precision;
-- a renewal reads and writes only the worker's own rows
CREATE INDEX IF NOT EXISTS kinesis_leases_owner ON kinesis_leases (stream, owner);
