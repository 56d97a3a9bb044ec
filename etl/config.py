"""The ETL's tunables (``RECSYS_ETL__*``): handed to the pipeline by the wiring place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["MARIADB_JDBC_JAR", "EtlSettings"]

MARIADB_JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"  # Debian's libmariadb-java


class EtlSettings(BaseModel):
    engine: Literal["python", "spark"] = Field(
        "python", description="python: one process, bounded memory; spark: a PySpark job (docs/etl.md)"
    )
    chunk_rows: int = Field(10_000, ge=100, le=5_000_000, description="rows per read chunk (memory)")
    row_group_rows: int = Field(100_000, ge=100, le=10_000_000, description="rows per Parquet row group")
    file_max_rows: int = Field(
        5_000_000, ge=1_000, description="rows per Parquet file before a new one starts"
    )
    update_policy: Literal["replace", "latest", "average"] = Field(
        "replace", description="repeated ratings of a pair: the later one, the newest by time, or the mean"
    )
    partition_by: Literal["none", "country", "customerNumber"] = Field(
        "none", description="lake partitioning; customerNumber makes a file per customer"
    )
    rating_time_column: str = Field("ratedAt", description="ratings' time column, for update_policy=latest")
    update_time_column: str = Field(
        "updatedAt", description="ratings' last-change time, for incremental runs (--since / --window)"
    )
    # data-quality gates: a run that fails one publishes nothing and leaves a report
    gates: bool = Field(True, description="check every run before publishing it")
    rating_min: float = Field(1.0, description="lowest allowed productRating")
    rating_max: float = Field(5.0, description="highest allowed productRating")
    max_orphan_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="ratings of an unknown product or customer allowed, per rating read"
    )
    min_row_fraction: float = Field(
        0.5, ge=0.0, le=10.0, description="a run must have at least this fraction of the previous run's rows"
    )
    report_sample_keys: int = Field(10, ge=0, le=1_000, description="offending keys kept per check")
    # the Spark engine
    spark_master: str = Field("local[2]", description="Spark master when no session runs (Glue has its own)")
    spark_jdbc_jars: str = Field(MARIADB_JDBC_JAR, description="JDBC driver jar(s), comma-separated")
    spark_read_partitions: int = Field(
        4, ge=1, le=1_000, description="parallel JDBC reads of ratings (ranges of customerNumber)"
    )
    spark_shuffle_partitions: int = Field(4, ge=1, le=10_000, description="spark.sql.shuffle.partitions")
    spark_driver_memory: str = Field("1g", description="spark.driver.memory of a local master")
    spark_fetch_rows: int = Field(10_000, ge=100, le=1_000_000, description="JDBC fetchsize")

    @model_validator(mode="after")
    def _range(self) -> EtlSettings:
        if self.rating_min > self.rating_max:
            raise ValueError(f"rating_min {self.rating_min} is above rating_max {self.rating_max}")
        return self
