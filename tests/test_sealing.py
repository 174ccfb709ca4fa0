"""Encryption at rest and the stored layout: what is personal, how it is sealed, where the keys live."""

from __future__ import annotations

import base64
import json
import multiprocessing
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amnesia.core.errors import IntegrityError
from amnesia.core.settings import load_settings
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore, FileEntry, Manifest, manifest_digest
from amnesia.storage.sealing import MAGIC, DataKeyError, FileKeyStore, KubernetesSecretKeyStore, open_sealed, seal

ROOT = Path(__file__).resolve().parents[1]


def _store(tmp_path: Path, seal_key: str | None = "run-r1", encrypt: bool = True) -> ArtifactStore:
    return ArtifactStore(load_settings(home=tmp_path / "home", encrypt=encrypt), seal_key=seal_key)


def test_the_layout_marks_exactly_the_personal_files() -> None:
    run = "s3://b/runs/r1"
    personal = [f"{run}/split/forget_train.parquet", f"{run}/split/forget_eval.parquet",
                f"{run}/split/mia_members.parquet", f"{run}/split/requests.jsonl",
                f"{run}/trace/heatmaps/fact2_mlp.png",
                f"{run}/evaluate/base/generations.jsonl", "s3://b/cache/evaluations/ab12/generations.jsonl",
                "/tmp/store/runs/r2/split/forget_train.parquet"]  # fmt: skip
    evidence = [f"{run}/split/retain_train.parquet", f"{run}/split/mia_nonmembers.parquet",
                f"{run}/split/split_report.json", f"{run}/trace/heatmaps/aggregate_mlp.png",
                f"{run}/trace/aggregate.json", f"{run}/evaluate/base/items.jsonl", f"{run}/evaluate/base/mia.jsonl",
                "s3://b/cache/evaluations/ab12/result.json", f"{run}/report/verdict.json",
                f"{run}/unlearn/model/model.safetensors", "s3://b/demo/k/world/forget.jsonl",
                f"{run}/split/_manifest.json"]  # fmt: skip
    assert [u for u in personal if not L.personal(u)] == []
    assert [u for u in evidence if L.personal(u)] == []
    assert L.stage_uri(run, "evaluate", "base", L.ITEMS) == f"{run}/evaluate/base/items.jsonl"
    assert L.stage_uri(run, "gate", L.VERDICT) == f"{run}/report/verdict.json"
    assert L.store_root(run) == "s3://b" and L.run_root("s3://b", "r1") == run


def test_no_stored_file_name_is_spelled_out_outside_the_layout() -> None:
    """One home for each name: the stages, CLI, lineage, audit and purge read amnesia.storage.layout's constants."""
    names = {v for k, v in vars(L).items() if k.isupper() and isinstance(v, str) and re.search(r"\.\w+$", v)}
    names.discard(L.MANIFEST_NAME)  # the store's own file, named in amnesia.storage.artifacts
    assert {"aggregate.json", "verdict.json", "requests.jsonl", "generations.jsonl"} <= names
    found = []
    for path in [*ROOT.glob("amnesia/**/*.py"), *ROOT.glob("components/*.py"), *ROOT.glob("pipelines/*.py")]:
        if path.name == "layout.py" or "demo" in path.parts or path.name == "demo.py":  # the demo world's own files
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {n}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert found == []


def test_personal_files_are_sealed_on_upload_and_open_on_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "forget_train.parquet").write_bytes(b"Ada Lovelace was born in 1815")
    (src / "split_report.json").write_text('{"request_ids": ["REQ-1"]}')
    folder = str(tmp_path / "store" / "runs" / "r1" / "split")
    ref = store.put_dir(src, folder)

    raw = Path(folder, "forget_train.parquet").read_bytes()
    assert raw.startswith(MAGIC) and b"Lovelace" not in raw and b"run-r1" in raw
    assert Path(folder, "split_report.json").read_bytes() == b'{"request_ids": ["REQ-1"]}'  # evidence: as written
    manifest = store.read_manifest(folder)
    assert {e.path: e.key_id for e in manifest.files} == {"forget_train.parquet": "run-r1", "split_report.json": None}
    assert store.verify(folder).digest == ref.digest  # the ciphertext is what is hashed: no key needed

    reader = _store(tmp_path, seal_key=None)  # another process, same key store
    assert reader.get_bytes(f"{folder}/forget_train.parquet") == b"Ada Lovelace was born in 1815"
    out = reader.get_file(f"{folder}/forget_train.parquet", tmp_path / "out.parquet")
    assert out.read_bytes() == b"Ada Lovelace was born in 1815"
    reader.get_dir(folder, tmp_path / "copy")
    assert (tmp_path / "copy" / "forget_train.parquet").read_bytes() == b"Ada Lovelace was born in 1815"
    keys = Path(store.settings.keystore_spec().removeprefix("file:"))
    assert keys.stat().st_mode & 0o777 == 0o600

    plain = _store(tmp_path / "off", encrypt=False)  # AMNESIA_ENCRYPT=false: written as it is
    plain.put_dir(src, str(tmp_path / "plain" / "runs" / "r1" / "split"))
    assert Path(tmp_path / "plain/runs/r1/split/forget_train.parquet").read_bytes().startswith(b"Ada")


def test_a_changed_byte_or_a_destroyed_key_never_opens(tmp_path: Path) -> None:
    keys = FileKeyStore(tmp_path / "keys.json")
    blob = seal(b"secret", "run-x", keys.create("run-x"))
    assert open_sealed(blob, keys, "obj") == b"secret"
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(IntegrityError, match="obj: sealed with run-x but does not open"):
        open_sealed(flipped, keys, "obj")
    other = blob.replace(b"run-x", b"run-y")  # the header is authenticated: a relabelled key id fails too
    keys.create("run-y")
    with pytest.raises(IntegrityError):
        open_sealed(other, keys, "obj")
    assert keys.destroy("run-x") is True
    with pytest.raises(DataKeyError, match=r"obj: data key run-x was destroyed on \d{4}-\d\d-\d\dT.*\(purged\)"):
        open_sealed(blob, keys, "obj")
    with pytest.raises(DataKeyError, match="not made again"):
        keys.create("run-x")
    assert "run-x" in json.loads((tmp_path / "keys.json").read_text())  # listed as destroyed, key gone
    assert "key" not in json.loads((tmp_path / "keys.json").read_text())["run-x"]


def _create(path: str, queue: Any) -> None:
    queue.put(FileKeyStore(Path(path)).create("run-shared"))


def test_processes_racing_for_a_runs_key_all_get_the_same_one(tmp_path: Path) -> None:
    """The evaluate tasks run in parallel: each must seal with the one key, not overwrite another's."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(str(tmp_path / "keys.json"), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    got = {queue.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(got) == 1 and len(next(iter(got))) == 32


def test_a_folder_without_sealed_files_keeps_its_digest() -> None:
    """Manifests recorded before encryption existed still verify: key ids join the digest only when set."""
    entries = [FileEntry(path="a.json", size=2, sha256="0" * 64)]
    import hashlib

    old = hashlib.sha256(f"a.json\t2\t{'0' * 64}\n".encode()).hexdigest()
    assert manifest_digest(entries) == old and b"key_id" not in Manifest.of(entries).to_bytes()
    sealed = [FileEntry(path="a.json", size=2, sha256="0" * 64, key_id="run-1")]
    assert manifest_digest(sealed) != old


class _FakeSecrets(BaseHTTPRequestHandler):
    """The two calls of the Kubernetes Secret API the key store makes (GET, merge PATCH), for one Secret."""

    data: dict[str, str] = {}
    calls: list[tuple[str, str, str]] = []
    version = 1
    stale_once = True  # the first conditional patch meets another writer's change: 409, read again

    def _send(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, self.headers["Authorization"]))
        self._send(200, {"kind": "Secret", "metadata": {"resourceVersion": str(self.version)}, "data": dict(self.data)})

    def do_PATCH(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("PATCH", self.path, self.headers["Content-Type"]))
        if _FakeSecrets.stale_once or body["metadata"]["resourceVersion"] != str(self.version):
            _FakeSecrets.stale_once, _FakeSecrets.version = False, self.version + 1
            return self._send(409, {"kind": "Status", "reason": "Conflict"})
        self.data.update(body["data"])
        _FakeSecrets.version += 1
        self._send(200, {"kind": "Secret"})

    def log_message(self, *args: Any) -> None:
        pass


def test_the_kubernetes_key_store_reads_and_patches_its_secret() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSecrets)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        keys = KubernetesSecretKeyStore("amnesia", "amnesia-data-keys", api=f"http://127.0.0.1:{server.server_port}",
                                        token="sa-token")  # fmt: skip
        key = keys.create("run-demo_1")
        assert keys.create("run-demo_1") == key and keys.get("run-demo_1") == key and len(key) == 32
        stored = _FakeSecrets.data
        assert list(stored) == ["run-demo_5f1"]  # Secret data keys: [-._a-zA-Z0-9]; '_' escaped
        assert base64.b64decode(json.loads(base64.b64decode(stored["run-demo_5f1"]))["key"]) == key
        path = "/api/v1/namespaces/amnesia/secrets/amnesia-data-keys"
        assert ("GET", path, "Bearer sa-token") in _FakeSecrets.calls
        assert ("PATCH", path, "application/merge-patch+json") in _FakeSecrets.calls
        assert keys.destroy("run-demo_1") is True
        with pytest.raises(DataKeyError, match="run-demo_1 was destroyed"):
            keys.get("run-demo_1")
    finally:
        server.shutdown()
    with pytest.raises(DataKeyError, match="not in a cluster"):
        KubernetesSecretKeyStore("amnesia", "keys", api="")
