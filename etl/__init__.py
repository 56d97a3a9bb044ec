"""The batch pipeline (the Glue job's equivalent): source database -> Parquet training data in the lake."""
