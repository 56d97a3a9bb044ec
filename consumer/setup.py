"""Create what the consumer reads from and writes to, when missing (idempotent; emulator or AWS).

``ensure_stream`` creates a Kinesis stream and waits until it is ACTIVE; ``ensure_delivery_stream``
creates a DirectPut Firehose delivery stream writing to an S3 prefix (and, on an emulator, the
bucket). On real AWS the IAM role Firehose assumes comes from ``RECSYS_FIREHOSE_ROLE_ARN``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from core.errors import ConfigError, InfraError, NotFoundError
from infra.aws import map_client_error, sync_client
from infra.objectstore import parse_uri

__all__ = ["ensure_delivery_stream", "ensure_stream", "wait_stream_active"]

_EMULATOR_ROLE = "arn:aws:iam::123456789012:role/firehose-delivery"


def _on_emulator() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL"))


def wait_stream_active(client: Any, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
        except Exception as exc:
            raise map_client_error(exc, f"describing stream {name}") from exc
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise InfraError(f"stream {name} is still {status} after {timeout_s:.0f}s")
        time.sleep(0.2)


def ensure_stream(name: str, shards: int = 2) -> None:
    """Create the stream with ``shards`` shards if it does not exist; wait until it is ACTIVE."""
    if shards < 1:
        raise ConfigError("a stream needs at least one shard")
    client = sync_client("kinesis")
    try:
        client.create_stream(StreamName=name, ShardCount=shards)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code != "ResourceInUseException":
            raise map_client_error(exc, f"creating stream {name}") from exc
    wait_stream_active(client, name)


def ensure_delivery_stream(name: str, bucket_uri: str) -> None:
    """Create a DirectPut delivery stream ``name`` writing newline-delimited JSON to ``bucket_uri``."""
    location = parse_uri(bucket_uri)
    if location.scheme != "s3":
        raise ConfigError(f"a delivery stream writes to S3; got {bucket_uri!r} (use s3://bucket/prefix)")
    if _on_emulator():
        s3 = sync_client("s3")
        try:
            s3.head_bucket(Bucket=location.bucket)
        except Exception as exc:
            if not isinstance(map_client_error(exc, "bucket"), NotFoundError) and "403" not in str(exc):
                raise map_client_error(exc, f"checking bucket {location.bucket}") from exc
            s3.create_bucket(Bucket=location.bucket)
    firehose = sync_client("firehose")
    try:
        firehose.describe_delivery_stream(DeliveryStreamName=name)
        return
    except Exception as exc:
        if not isinstance(map_client_error(exc, "describe"), NotFoundError):
            raise map_client_error(exc, f"describing delivery stream {name}") from exc
    role = os.environ.get("RECSYS_FIREHOSE_ROLE_ARN") or (_EMULATOR_ROLE if _on_emulator() else None)
    if role is None:
        raise ConfigError("set RECSYS_FIREHOSE_ROLE_ARN to the IAM role Firehose assumes to write to S3")
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": role,
                "BucketARN": f"arn:aws:s3:::{location.bucket}",
                "Prefix": prefix,
                "ErrorOutputPrefix": f"{prefix}errors/",
                "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 60},
                "CompressionFormat": "UNCOMPRESSED",
            },
        )
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code != "ResourceInUseException":
            raise map_client_error(exc, f"creating delivery stream {name}") from exc
