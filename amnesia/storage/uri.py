"""Where things are stored: s3://BUCKET/KEY or a local path, joined and checked (no '..', no empty parts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from amnesia.core.errors import StoreError

MANIFEST_NAME = "_manifest.json"


def safe_relpath(rel: str) -> str:
    """A key below a prefix: relative, no '..', no empty or '.' parts, no backslashes."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise StoreError(f"key {rel!r} is not a relative path below its prefix")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"key {rel!r} escapes or is not normalised below its prefix ('..', '.' or '//')")
    return rel


@dataclass(frozen=True)
class Location:
    uri: str
    bucket: str | None  # None for a local path
    key: str  # S3 key/prefix, or the local path

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def path(self) -> Path:
        return Path(self.key)

    def child(self, rel: str) -> Location:
        rel = safe_relpath(rel)
        if self.is_s3:
            key = f"{self.key.rstrip('/')}/{rel}" if self.key else rel
            return Location(f"s3://{self.bucket}/{key}", self.bucket, key)
        path = str(PurePosixPath(self.key) / rel)
        return Location(path, None, path)


def parse_uri(uri: str) -> Location:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise StoreError(f"{uri!r}: an s3:// URI needs a bucket (s3://BUCKET/KEY)")
        if key.startswith("/"):  # s3://bucket//abs/key: S3 would store it at abs/key, silently elsewhere
            raise StoreError(f"{uri!r}: an empty path part after the bucket ('//'); write s3://{bucket}/KEY")
        key = key.rstrip("/")
        if key:
            safe_relpath(key)
        return Location(f"s3://{bucket}/{key}" if key else f"s3://{bucket}", bucket, key)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"{uri!r}: unsupported scheme (use s3://BUCKET/KEY or a local path)")
    path = uri.removeprefix("file://")
    return Location(path, None, path)


def join(uri: str, *parts: str) -> str:
    loc = parse_uri(uri)
    for part in parts:
        loc = loc.child(part)
    return loc.uri
