"""The Kinesis consumer: shard leases, checkpoints, workers, Firehose delivery, dead letters, the producer."""
