"""The artifact store: files and folders under s3:// URIs or local paths, each folder with a manifest.

A folder's manifest (relative path, size, sha256 per file, one digest for the whole) is written
last: a prefix without one is an incomplete upload and is never read as a whole artifact.
Downloads are verified against it; a changed or missing object is an IntegrityError naming the key.
Everything large in the pipeline (datasets, models, checkpoints, reports) travels through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from amnesia.core.errors import IntegrityError, MissingError, StoreError
from amnesia.core.settings import Settings
from amnesia.core.settings import settings as default_settings
from amnesia.storage.sealing import MAGIC, KeyStore, key_store, open_sealed, seal
from amnesia.storage.uri import MANIFEST_NAME, Location, parse_uri, safe_relpath

MANIFEST_FORMAT = "amnesia-manifest/1"
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_CHUNK = 1 << 20


# ---------------------------------------------------------------- digests and manifests


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str  # of the stored bytes: the ciphertext when sealed, so audits need no key
    key_id: str | None = None  # sealed (amnesia.storage.sealing) with this data key


class Manifest(BaseModel):
    format: Literal["amnesia-manifest/1"] = MANIFEST_FORMAT
    files: list[FileEntry]
    digest: str

    @classmethod
    def of(cls, entries: list[FileEntry]) -> Manifest:
        entries = sorted(entries, key=lambda e: e.path)
        return cls(files=entries, digest=manifest_digest(entries))

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=1, exclude_none=True) + "\n").encode()


def manifest_digest(entries: list[FileEntry]) -> str:
    """One digest for a folder: sha256 over the sorted (path, size, sha256) lines."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        sealed = f"\t{e.key_id}" if e.key_id else ""  # a folder without sealed files keeps its old digest
        h.update(f"{e.path}\t{e.size}\t{e.sha256}{sealed}\n".encode())
    return h.hexdigest()


class ArtifactRef(BaseModel):
    """What a KFP artifact or a lineage tag carries: where it is and what it must hash to."""

    uri: str
    digest: str
    kind: Literal["dir", "file"]
    size: int


# ---------------------------------------------------------------- URIs


# ---------------------------------------------------------------- S3 error messages


_CLIENT_HINTS = {
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint} (create it, or set AMNESIA_BUCKET)",
    "InvalidAccessKeyId": "S3 at {endpoint} does not know this access key (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "S3 at {endpoint} rejected the request signature (check AWS_SECRET_ACCESS_KEY)",
    "AccessDenied": "access denied to {uri} (check the credentials' S3 policy)",
    "NoSuchKey": "{uri} does not exist",
    "404": "{uri} does not exist",
    "403": "access to {uri} forbidden (check the credentials and their S3 policy)",
}


def _from_s3(err: Any) -> bool:
    """Whether an error response came from an S3 server: every S3 implementation sends x-amz-* headers
    (a request id at least); a web server at the wrong address answers 404 without them."""
    headers = err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return not headers or any(k.lower().startswith("x-amz-") for k in headers)


def _describe(err: BaseException, uri: str, bucket: str | None, endpoint: str, attempts: int) -> str:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(err, S3UploadFailedError) and err.__context__ is not None:
        err = err.__context__
    if isinstance(err, ClientError) and not _from_s3(err):
        headers = err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        server = f", server {headers['server']!r}" if "server" in headers else ""
        return (
            f"{endpoint} does not answer as an S3 server (HTTP {status} without S3 headers{server}); "
            "check AMNESIA_S3_ENDPOINT_URL (AWS_ENDPOINT_URL_S3)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        hint = _CLIENT_HINTS.get(code)
        if hint:
            return hint.format(bucket=bucket, endpoint=endpoint, uri=uri)
        return f"S3 error {code or 'unknown'} on {uri}: {err.response.get('Error', {}).get('Message', '')}"
    if isinstance(err, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError):
        return (
            f"S3 endpoint {endpoint} unreachable or not answering after {attempts} attempts while "
            f"accessing {uri} (is the server up? `amnesia stack up`, or check AMNESIA_S3_ENDPOINT_URL)"
        )
    if isinstance(err, NoCredentialsError):
        return "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or `amnesia stack up`)"
    return f"S3 failure on {uri}: {err.__class__.__name__}: {err}"


# ---------------------------------------------------------------- the store


Progress = Callable[[int], None]


class ArtifactStore:
    """Put and get files and folders; S3 through boto3 with bounded standard-mode retries."""

    def __init__(self, settings: Settings | None = None, seal_key: str | None = None) -> None:
        self.settings = settings or default_settings()
        self._client: Any = None
        self._keys: KeyStore | None = None
        # The data key personal files are sealed with on upload (amnesia.storage.layout says which are personal);
        # None: written as they are. Reads open sealed objects whatever this is.
        self.seal_key = seal_key if self.settings.encrypt else None

    # -------------------------------------------------------- encryption at rest

    @property
    def keys(self) -> KeyStore:
        if self._keys is None:
            self._keys = key_store(self.settings.keystore_spec())
        return self._keys

    def _sealing(self, uri: str) -> str | None:
        """The key id to seal this object with, or None."""
        from amnesia.storage.layout import personal

        return self.seal_key if self.seal_key and personal(uri) else None

    def _seal(self, data: bytes, key_id: str) -> bytes:
        return seal(data, key_id, self.keys.create(key_id))

    def _open(self, data: bytes, uri: str) -> bytes:
        return open_sealed(data, self.keys, uri) if data.startswith(MAGIC) else data

    # -------------------------------------------------------- S3 plumbing

    @property
    def endpoint(self) -> str:
        return self.settings.s3_endpoint_url or "AWS S3"

    @property
    def s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            cfg = Config(
                retries={"max_attempts": s.s3_max_attempts, "mode": "standard"},
                connect_timeout=s.s3_connect_timeout,
                read_timeout=s.s3_read_timeout,
                s3={"addressing_style": "path"} if s.s3_endpoint_url else {},
            )
            secret = s.aws_secret_access_key.get_secret_value() if s.aws_secret_access_key else None
            self._client = boto3.client(
                "s3",
                endpoint_url=s.s3_endpoint_url,
                region_name=s.aws_region,
                config=cfg,
                aws_access_key_id=s.aws_access_key_id,
                aws_secret_access_key=secret,
            )
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        mb = self.settings.s3_multipart_threshold_mb * (1 << 20)
        return TransferConfig(
            multipart_threshold=mb,
            multipart_chunksize=mb,
            max_concurrency=4,
            num_download_attempts=self.settings.s3_max_attempts,
        )

    @contextlib.contextmanager
    def _s3_errors(self, loc: Location, action: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as err:
            msg = _describe(err, loc.uri, loc.bucket, self.endpoint, self.settings.s3_max_attempts)
            code = err.response.get("Error", {}).get("Code") if isinstance(err, ClientError) else None
            missing = code in _NOT_FOUND and _from_s3(err)
            raise (MissingError if missing else StoreError)(f"{action} failed: {msg}") from None

    # -------------------------------------------------------- bytes and small objects

    def put_bytes(self, data: bytes, uri: str, content_type: str = "application/octet-stream") -> ArtifactRef:
        loc = parse_uri(uri)
        if key_id := self._sealing(loc.uri):
            data = self._seal(data, key_id)
        digest = hashlib.sha256(data).hexdigest()
        if loc.is_s3:
            with self._s3_errors(loc, f"writing {loc.uri}"):
                self.s3.put_object(
                    Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type, Metadata={"sha256": digest}
                )
        else:
            _atomic_write(loc.path, data)
        return ArtifactRef(uri=loc.uri, digest=digest, kind="file", size=len(data))

    def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        loc = parse_uri(uri)
        if loc.is_s3:
            with self._s3_errors(loc, f"reading {loc.uri}"):
                obj = self.s3.get_object(Bucket=loc.bucket, Key=loc.key)
                data = obj["Body"].read()
            sha256 = sha256 or obj.get("Metadata", {}).get("sha256")
        else:
            try:
                data = loc.path.read_bytes()
            except FileNotFoundError:
                raise MissingError(f"reading {loc.uri} failed: it does not exist") from None
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"{loc.uri}: content does not match its recorded sha256 (changed or corrupt)")
        return self._open(data, loc.uri)

    def put_json(self, obj: Any, uri: str) -> ArtifactRef:
        data = (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()
        return self.put_bytes(data, uri, "application/json")

    def get_json(self, uri: str) -> Any:
        return json.loads(self.get_bytes(uri))

    def exists(self, uri: str) -> bool:
        loc = parse_uri(uri)
        if not loc.is_s3:
            return loc.path.exists()
        from botocore.exceptions import ClientError

        with self._s3_errors(loc, f"checking {loc.uri}"):
            try:
                self.s3.head_object(Bucket=loc.bucket, Key=loc.key)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in _NOT_FOUND and _from_s3(err):
                    return False
                raise
        return True

    def list(self, uri: str) -> list[str]:
        """URIs of every object below a prefix, sorted."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            root = loc.path
            return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
        out: list[str] = []
        with self._s3_errors(loc, f"listing {loc.uri}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
                out += [f"s3://{loc.bucket}/{o['Key']}" for o in page.get("Contents", [])]
        return sorted(out)

    def delete(self, uri: str) -> None:
        self._delete(parse_uri(uri))

    def ensure_bucket(self, bucket: str) -> bool:
        """Create the bucket unless it exists (a cluster's bucket-init Job); True when it was created."""
        from botocore.exceptions import ClientError

        loc = parse_uri(f"s3://{bucket}")
        with self._s3_errors(loc, f"creating bucket {bucket}"):
            try:
                self.s3.head_bucket(Bucket=bucket)
                return False
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            region = self.settings.aws_region
            extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            self.s3.create_bucket(Bucket=bucket, **extra)
        return True

    def delete_dir(self, uri: str) -> None:
        """Remove a stored folder: its manifest first, so a half-deleted folder reads as incomplete."""
        loc = parse_uri(uri)
        self._delete(loc.child(MANIFEST_NAME))
        for child in self.list(loc.uri):
            self._delete(parse_uri(child))
        if not loc.is_s3 and loc.path.is_dir():
            shutil.rmtree(loc.path, ignore_errors=True)

    # -------------------------------------------------------- single files

    def put_file(self, src: Path, uri: str, progress: Progress | None = None) -> ArtifactRef:
        """Upload one file (multipart above the threshold); its sha256 rides along as metadata."""
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"{src}: not a file")
        loc = parse_uri(uri)
        if self._sealing(loc.uri):  # personal files are small: sealed in memory
            return self.put_bytes(src.read_bytes(), loc.uri)
        digest, size = sha256_file(src), src.stat().st_size
        if loc.is_s3:
            with self._s3_errors(loc, f"uploading {src.name} to {loc.uri}"):
                self.s3.upload_file(
                    str(src),
                    loc.bucket,
                    loc.key,
                    ExtraArgs={"Metadata": {"sha256": digest}},
                    Config=self._transfer_config(),
                    Callback=progress,
                )
        else:
            _atomic_copy(src, loc.path)
        return ArtifactRef(uri=loc.uri, digest=digest, kind="file", size=size)

    def get_file(self, uri: str, dst: Path, sha256: str | None = None) -> Path:
        """Download one file atomically and check it against sha256 (given, or recorded at upload)."""
        loc, dst = parse_uri(uri), Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            if loc.is_s3:
                with self._s3_errors(loc, f"downloading {loc.uri}"):
                    if sha256 is None:
                        sha256 = self.s3.head_object(Bucket=loc.bucket, Key=loc.key).get("Metadata", {}).get("sha256")
                    self.s3.download_file(loc.bucket, loc.key, str(tmp), Config=self._transfer_config())
            else:
                if not loc.path.is_file():
                    raise MissingError(f"downloading {loc.uri} failed: it does not exist")
                shutil.copyfile(loc.path, tmp)
            if sha256 and sha256_file(tmp) != sha256:
                raise IntegrityError(f"{loc.uri}: content does not match its recorded sha256 (changed or corrupt)")
            with open(tmp, "rb") as fh:
                sealed = fh.read(len(MAGIC)) == MAGIC
            if sealed:
                _atomic_write(tmp, self._open(tmp.read_bytes(), loc.uri))
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    # -------------------------------------------------------- folders

    def put_dir(self, src: Path, uri: str, progress: Progress | None = None) -> ArtifactRef:
        """Upload a folder, then its manifest. On failure, no manifest: the prefix stays incomplete."""
        src = Path(src)
        if not src.is_dir():
            raise StoreError(f"{src}: not a folder")
        files = _walk(src)
        if not files:
            raise StoreError(f"{src}: folder is empty; nothing to store")
        loc = parse_uri(uri)
        if self.exists(loc.child(MANIFEST_NAME).uri):
            # Never leave a stale manifest over new files while they upload.
            self._delete(loc.child(MANIFEST_NAME))
        else:
            self._clear_unfinished(loc, set(files))  # what an interrupted upload here left (a retried task)
        entries: list[FileEntry] = []
        try:
            for rel in files:
                ref = self.put_file(src / rel, loc.child(rel).uri, progress)
                key_id = self._sealing(loc.child(rel).uri)
                entries.append(FileEntry(path=rel, size=ref.size, sha256=ref.digest, key_id=key_id))
        except StoreError:
            self._cleanup(loc, [e.path for e in entries])
            raise
        manifest = Manifest.of(entries)
        self.put_bytes(manifest.to_bytes(), loc.child(MANIFEST_NAME).uri, "application/json")
        return ArtifactRef(uri=loc.uri, digest=manifest.digest, kind="dir", size=manifest.size)

    def read_manifest(self, uri: str) -> Manifest:
        loc = parse_uri(uri)
        mloc = loc.child(MANIFEST_NAME)
        if not self.exists(mloc.uri):
            raise IntegrityError(f"{loc.uri}: no {MANIFEST_NAME} (missing, or an upload that never finished)")
        try:
            manifest = Manifest.model_validate_json(self.get_bytes(mloc.uri))
        except ValueError:
            raise IntegrityError(f"{mloc.uri}: not a valid manifest") from None
        if manifest.digest != manifest_digest(manifest.files):
            raise IntegrityError(f"{mloc.uri}: manifest digest does not match its entries (edited?)")
        for e in manifest.files:
            safe_relpath(e.path)
        return manifest

    def get_dir(self, uri: str, dst: Path, overwrite: bool = False) -> Manifest:
        """Download and verify a folder; dst appears only when every file checked out."""
        loc, dst = parse_uri(uri), Path(dst)
        if dst.exists() and any(dst.iterdir()) and not overwrite:
            raise StoreError(f"{dst}: already exists and is not empty (pass overwrite to replace it)")
        manifest = self.read_manifest(loc.uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
        try:
            for e in manifest.files:
                self._get_entry(loc, e, tmp / e.path)
            (tmp / MANIFEST_NAME).write_bytes(manifest.to_bytes())
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return manifest

    def fetch_dir(self, uri: str, cache_root: Path) -> Path:
        """A verified local copy of a folder, cached by its manifest digest."""
        manifest = self.read_manifest(uri)
        target = Path(cache_root) / manifest.digest
        if (target / MANIFEST_NAME).exists():
            return target
        self.get_dir(uri, target, overwrite=True)
        return target

    def verify(self, uri: str) -> Manifest:
        """Re-hash every object a manifest names, without keeping them (for audits)."""
        return self.verify_except(uri, {})[0]

    def verify_except(self, uri: str, gone: dict[str, str]) -> tuple[Manifest, list[str]]:
        """verify, where the objects in `gone` (uri -> the sha256 the manifest must record for it) may be
        missing: deleted on purpose (`amnesia purge`). Returns the manifest and the paths found missing so."""
        loc = parse_uri(uri)
        manifest = self.read_manifest(loc.uri)
        missing = []
        for e in manifest.files:
            child = loc.child(e.path)
            if gone.get(child.uri) == e.sha256 and not self.exists(child.uri):
                missing.append(e.path)
                continue
            if self._hash_remote(child) != (e.size, e.sha256):
                raise IntegrityError(f"{child.uri}: size or sha256 differs from the manifest")
        return manifest, missing

    def hash_object(self, uri: str) -> tuple[int, str]:
        """Size and sha256 of the stored bytes (sealed objects stay sealed)."""
        found = self._hash_remote(parse_uri(uri))
        assert found is not None
        return found

    def ref(self, uri: str) -> ArtifactRef:
        manifest = self.read_manifest(uri)
        return ArtifactRef(uri=parse_uri(uri).uri, digest=manifest.digest, kind="dir", size=manifest.size)

    # -------------------------------------------------------- internals

    def _get_entry(self, loc: Location, entry: FileEntry, dst: Path) -> None:
        child = loc.child(entry.path)
        try:
            self.get_file(child.uri, dst, sha256=entry.sha256)
        except MissingError:
            raise IntegrityError(f"{child.uri}: listed in the manifest but missing") from None

    def _hash_remote(self, loc: Location) -> tuple[int, str] | None:
        h, size = hashlib.sha256(), 0
        if loc.is_s3:
            try:
                with self._s3_errors(loc, f"verifying {loc.uri}"):
                    body = self.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
                    for block in body.iter_chunks(_CHUNK):
                        h.update(block)
                        size += len(block)
            except MissingError:
                raise IntegrityError(f"{loc.uri}: listed in the manifest but missing") from None
            return size, h.hexdigest()
        if not loc.path.is_file():
            raise IntegrityError(f"{loc.uri}: listed in the manifest but missing")
        return loc.path.stat().st_size, sha256_file(loc.path)

    def _delete(self, loc: Location) -> None:
        if loc.is_s3:
            with self._s3_errors(loc, f"deleting {loc.uri}"):
                self.s3.delete_object(Bucket=loc.bucket, Key=loc.key)
        else:
            loc.path.unlink(missing_ok=True)

    def _cleanup(self, loc: Location, rels: list[str]) -> None:
        """Best effort: remove what a failed put_dir wrote (the server may be gone: the next upload to the
        same folder clears the rest, `_clear_unfinished`)."""
        for rel in rels:
            with contextlib.suppress(StoreError):
                self._delete(loc.child(rel))
        with contextlib.suppress(StoreError):
            self._abort_multipart(loc)

    def _clear_unfinished(self, loc: Location, incoming: set[str]) -> None:
        """Before a folder without a manifest is uploaded: abort its never-completed multipart uploads, and
        delete the objects an interrupted upload left that this one will not overwrite. A prefix that holds
        other stored folders (a manifest below it) is left as it is."""
        self._abort_multipart(loc)
        found = self.list(loc.uri)
        if any(u.endswith("/" + MANIFEST_NAME) for u in found):
            return
        base = loc.uri.rstrip("/") + "/"
        for uri in found:
            if uri.removeprefix(base) not in incoming:
                self._delete(parse_uri(uri))

    def _abort_multipart(self, loc: Location) -> None:
        if not loc.is_s3:
            return
        prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
        with self._s3_errors(loc, f"aborting unfinished uploads under {loc.uri}"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.s3.abort_multipart_upload(Bucket=loc.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _walk(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            out.append(safe_relpath(path.relative_to(root).as_posix()))
    return out


def _atomic_write(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
