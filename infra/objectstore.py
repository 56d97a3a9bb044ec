"""A small synchronous object store over S3 or a local folder, for the batch side (lake, artifacts).

URIs: ``s3://bucket/prefix`` or a local path (``/data/lake``, ``file:///data/lake``). Keys are
relative to the prefix and use ``/``. Writes of a whole object are atomic on both backends (S3 PUT,
local write-then-rename), which is what run manifests and artifact versions are built on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from core.errors import ConfigError, NotFoundError
from infra.aws import map_client_error, sync_client

__all__ = ["LocalStore", "ObjectStore", "S3Store", "open_store", "parse_uri"]


@dataclass(frozen=True, slots=True)
class Location:
    scheme: str  # "s3" or "file"
    bucket: str  # empty for files
    prefix: str  # no leading or trailing slash (s3); an absolute path (file)


def parse_uri(uri: str) -> Location:
    if not uri or not uri.strip():
        raise ConfigError("an empty URI was given; use s3://bucket/prefix or a local path")
    uri = uri.strip()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{uri!r} has no bucket; use s3://bucket/prefix")
        return Location("s3", parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return Location("file", "", str(Path(path).expanduser().resolve()))
    raise ConfigError(
        f"{uri!r}: unsupported scheme {parsed.scheme!r}; use s3://bucket/prefix or a local path"
    )


class ObjectStore(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object atomically (readers see the old object or the new one)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for large files); atomic like ``put_bytes``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object. Raises ``NotFoundError`` if it does not exist."""
        ...

    def download(self, key: str, path: Path) -> None:
        """Copy an object to a local file. Raises ``NotFoundError`` if it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store), in lexicographic order."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete keys; missing keys are not an error."""
        ...

    def child(self, key_prefix: str) -> ObjectStore:
        """A store rooted at ``key_prefix`` below this one."""
        ...


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents and path != self.root.resolve():
            raise ConfigError(f"key {key!r} escapes the store root")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.root / key} does not exist") from None

    def download(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(f"{source} does not exist")
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = sorted(
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )
        return (k for k in keys if k.startswith(prefix))

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def child(self, key_prefix: str) -> LocalStore:
        return LocalStore(str(self.root / key_prefix.strip("/")))


class S3Store:
    def __init__(self, bucket: str, prefix: str, client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client if client is not None else sync_client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise map_client_error(exc, f"writing {self.uri}/{key}") from exc

    def put_file(self, key: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), self.bucket, self._key(key))
        except Exception as exc:
            raise map_client_error(exc, f"uploading {self.uri}/{key}") from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise map_client_error(exc, f"reading {self.uri}/{key}") from exc

    def download(self, key: str, path: Path) -> None:
        try:
            self._client.download_file(self.bucket, self._key(key), str(path))
        except Exception as exc:
            raise map_client_error(exc, f"downloading {self.uri}/{key}") from exc

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            mapped = map_client_error(exc, f"checking {self.uri}/{key}")
            if isinstance(mapped, NotFoundError):
                return False
            raise mapped from exc
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])[strip:]
        except Exception as exc:
            raise map_client_error(exc, f"listing {self.uri}/{prefix}") from exc

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            except Exception as exc:
                raise map_client_error(exc, f"deleting under {self.uri}") from exc

    def child(self, key_prefix: str) -> S3Store:
        return S3Store(self.bucket, self._key(key_prefix.strip("/")), self._client)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (local stacks and first runs)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except Exception as exc:
                raise map_client_error(exc, f"creating bucket {self.bucket}") from exc


def open_store(uri: str) -> ObjectStore:
    loc = parse_uri(uri)
    if loc.scheme == "s3":
        return S3Store(loc.bucket, loc.prefix)
    return LocalStore(loc.prefix)
