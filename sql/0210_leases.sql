-- Kinesis shard leases and checkpoints (the consumer's coordination state; KCL's lease table).
-- Every update of a lease is conditional on lease_counter: two workers never both hold a shard.
CREATE TABLE IF NOT EXISTS kinesis_leases (
    stream            text        NOT NULL,
    shard_id          text        NOT NULL,
    owner             text,                                 -- NULL: free (released or never taken)
    lease_counter     bigint      NOT NULL DEFAULT 0,       -- bumped by every take, renew, release
    checkpoint_seq    text,                                 -- sequence number, TRIM_HORIZON, SHARD_END, or NULL (initial position)
    checkpoint_sub    bigint      NOT NULL DEFAULT 0,       -- sub-sequence within a KPL aggregate
    parent_shard_ids  text[]      NOT NULL DEFAULT '{}',
    owner_switches    bigint      NOT NULL DEFAULT 0,
    ended             boolean     NOT NULL DEFAULT false,   -- checkpointed at SHARD_END
    renewed_at        timestamptz NOT NULL DEFAULT now(),   -- informational; expiry uses the observer's clock
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, shard_id)
);
