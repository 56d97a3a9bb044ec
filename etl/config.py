"""The ETL's tunables (``RECSYS_ETL__*``): handed to the pipeline by the wiring place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["EtlSettings"]


class EtlSettings(BaseModel):
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
