"""Encryption at rest for personal data: each run's data key, AES-256-GCM, and where the keys are kept.

A sealed object is `MAGIC | key id length | key id | nonce | ciphertext+tag`; the header is the
authenticated associated data, so a changed key id or a swapped byte fails to open. The store hashes
what it uploads, so manifests hold the ciphertext's digest: an audit re-hashes without any key.
Destroying a run's key (`amnesia purge`) makes every copy of its sealed objects unreadable, backups
included, before the objects themselves are deleted.

Key stores: a local JSON file (mode 0600) for the local stack; a Kubernetes Secret on a cluster
(`k8s:NAMESPACE/NAME`, through the API server with the pod's service account). Both implement `KeyStore`;
an external KMS plugs in the same way.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from amnesia.core.errors import AmnesiaError, IntegrityError

MAGIC = b"AMNSEAL1"
_NONCE = 12


class DataKeyError(AmnesiaError):
    """A data key is missing, destroyed, or its store is unreachable; the message names the key."""


class KeyStore(Protocol):
    def create(self, key_id: str) -> bytes:
        """The key, made now if it does not exist (concurrent callers get the same one)."""

    def get(self, key_id: str) -> bytes: ...

    def destroy(self, key_id: str) -> bool:
        """Forget the key for good; True when it existed. Its id stays listed as destroyed."""

    def describe(self) -> str: ...


def run_key_id(run_id: str) -> str:
    return f"run-{run_id}"


# ---------------------------------------------------------------- sealing


def seal(data: bytes, key_id: str, key: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kid = key_id.encode()
    header = MAGIC + len(kid).to_bytes(2, "big") + kid
    nonce = secrets.token_bytes(_NONCE)
    return header + nonce + AESGCM(key).encrypt(nonce, data, header)


def sealed_key_id(blob: bytes) -> str | None:
    """The key id of a sealed object (None: not sealed)."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 2:
        return None
    n = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 2], "big")
    return blob[len(MAGIC) + 2 : len(MAGIC) + 2 + n].decode()


def open_sealed(blob: bytes, keys: KeyStore, where: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key_id = sealed_key_id(blob)
    if key_id is None:
        return blob
    end = len(MAGIC) + 2 + len(key_id.encode())
    header, nonce, body = blob[:end], blob[end : end + _NONCE], blob[end + _NONCE :]
    try:
        return AESGCM(keys.get(key_id)).decrypt(nonce, body, header)
    except InvalidTag:
        raise IntegrityError(f"{where}: sealed with {key_id} but does not open (changed, or the wrong key)") from None
    except DataKeyError as err:
        raise DataKeyError(f"{where}: {err}") from None


# ---------------------------------------------------------------- key stores


_A_FOLDER = "a folder, not a file (set AMNESIA_KEYSTORE=file:/PATH/keys.json)"


class FileKeyStore:
    """Keys in one JSON file, mode 0600, changed under an exclusive lock and replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"file:{self.path}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        if self.path.is_dir():  # before the lock file: nothing is written beside a wrong path
            raise DataKeyError(f"key store {self.path}: {_A_FOLDER}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
                fh = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
                with os.fdopen(fh, "w") as out:
                    json.dump(data, out, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            raise DataKeyError(f"key store {self.path}: {_A_FOLDER}") from None
        except ValueError:
            raise DataKeyError(f"key store {self.path}: not valid JSON") from None

    def create(self, key_id: str) -> bytes:
        with self._locked() as data:
            entry = data.get(key_id)
            if entry is not None and "destroyed_at" in entry:
                raise DataKeyError(f"data key {key_id} was destroyed on {entry['destroyed_at']}; it is not made again")
            if entry is None:
                data[key_id] = entry = {"key": base64.b64encode(secrets.token_bytes(32)).decode(), "created_at": _now()}
            return base64.b64decode(entry["key"])

    def get(self, key_id: str) -> bytes:
        entry = self._read().get(key_id)
        return _key_of(entry, key_id, self.describe())

    def destroy(self, key_id: str) -> bool:
        with self._locked() as data:
            entry = data.get(key_id)
            existed = entry is not None and "key" in entry
            data[key_id] = {"destroyed_at": _now()} | ({"created_at": entry["created_at"]} if existed else {})
            return existed


class KubernetesSecretKeyStore:
    """Keys as the data of one Kubernetes Secret, read and patched through the API server (in a pod: the
    service account's token and CA; RBAC: get, create, patch on that Secret)."""

    _SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(self, namespace: str, name: str, api: str | None = None, token: str | None = None) -> None:
        self.namespace, self.name = namespace, name
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.api = api or (f"https://{host}:{port}" if host else "")
        self._token = token
        if not self.api:
            raise DataKeyError(f"key store k8s:{namespace}/{name}: not in a cluster (no KUBERNETES_SERVICE_HOST)")

    def describe(self) -> str:
        return f"k8s:{self.namespace}/{self.name}"

    def _call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        token = self._token or (self._SA / "token").read_text().strip()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", ctype)
        ctx = None
        if self.api.startswith("https") and (self._SA / "ca.crt").exists():
            ctx = ssl.create_default_context(cafile=str(self._SA / "ca.crt"))
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code == 409:
                raise _Conflict() from None
            raise DataKeyError(f"key store {self.describe()}: API server answered {err.code} to {method}") from None
        except OSError as err:
            raise DataKeyError(f"key store {self.describe()}: API server unreachable ({err})") from None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def _read(self) -> tuple[dict[str, Any], str | None]:
        secret = self._call("GET", self._path)
        if secret is None:
            raise DataKeyError(f"key store {self.describe()}: the Secret does not exist (manifests/base/secrets.yaml)")
        raw = secret.get("data") or {}
        entries = {_unslug(k): json.loads(base64.b64decode(v)) for k, v in raw.items()}
        return entries, (secret.get("metadata") or {}).get("resourceVersion")

    def _entries(self) -> dict[str, Any]:
        return self._read()[0]

    def _put(self, key_id: str, entry: dict[str, Any], version: str | None) -> None:
        """A merge patch conditional on the version read: a concurrent writer makes it fail (409), not win."""
        value = base64.b64encode(json.dumps(entry).encode()).decode()
        body: dict[str, Any] = {"data": {_slug(key_id): value}}
        if version is not None:
            body["metadata"] = {"resourceVersion": version}
        self._call("PATCH", self._path, body, "application/merge-patch+json")

    def _update(self, key_id: str, change: Any) -> Any:
        for _attempt in range(8):
            entries, version = self._read()
            result, entry = change(entries.get(key_id))
            if entry is None:
                return result
            try:
                self._put(key_id, entry, version)
                return result
            except _Conflict:
                continue  # another pod wrote first: read again (it may have made this very key)
        raise DataKeyError(f"key store {self.describe()}: {key_id} kept changing under concurrent writers")

    def create(self, key_id: str) -> bytes:
        def change(entry: dict[str, Any] | None) -> tuple[bytes, dict[str, Any] | None]:
            if entry is None:
                new = {"key": base64.b64encode(secrets.token_bytes(32)).decode(), "created_at": _now()}
                return base64.b64decode(new["key"]), new
            if "destroyed_at" in entry:
                raise DataKeyError(f"data key {key_id} was destroyed on {entry['destroyed_at']}; it is not made again")
            return base64.b64decode(entry["key"]), None

        return self._update(key_id, change)

    def get(self, key_id: str) -> bytes:
        return _key_of(self._entries().get(key_id), key_id, self.describe())

    def destroy(self, key_id: str) -> bool:
        def change(entry: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
            return entry is not None and "key" in entry, {"destroyed_at": _now()}

        return self._update(key_id, change)


class _Conflict(Exception):
    """The API server refused a write made against an older version of the Secret (HTTP 409)."""


def _slug(key_id: str) -> str:  # Secret data keys: [-._a-zA-Z0-9]+; '_' is the escape
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-." else f"_{ord(c):02x}" for c in key_id)


def _unslug(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "_":
            out.append(chr(int(name[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _key_of(entry: dict[str, Any] | None, key_id: str, where: str) -> bytes:
    if entry is None:
        raise DataKeyError(f"data key {key_id} is not in {where}")
    if "destroyed_at" in entry:
        raise DataKeyError(f"data key {key_id} was destroyed on {entry['destroyed_at']} (purged)")
    return base64.b64decode(entry["key"])


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_store(spec: str) -> KeyStore:
    """`file:/path/keys.json` or `k8s:NAMESPACE/SECRET`."""
    kind, _, rest = spec.partition(":")
    if kind == "file" and rest:
        return FileKeyStore(Path(rest))
    if kind == "k8s" and "/" in rest:
        namespace, name = rest.split("/", 1)
        return KubernetesSecretKeyStore(namespace, name)
    raise DataKeyError(f"AMNESIA_KEYSTORE={spec!r}: expected file:/PATH or k8s:NAMESPACE/SECRET")
