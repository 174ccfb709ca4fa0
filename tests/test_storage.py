"""The artifact store against the real S3-compatible server (and the local-path backend)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from amnesia.core.errors import IntegrityError, StoreError
from amnesia.core.settings import load_settings
from amnesia.devstack import stack
from amnesia.storage.artifacts import ArtifactStore, Manifest, MissingError, sha256_file
from amnesia.storage.uri import MANIFEST_NAME, join, parse_uri
from tests.conftest import settings_for


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"layers": 6}',
        "model.safetensors": os.urandom(300_000),
        "tok/tokenizer.json": b'{"v": 1}',
        "tok/deep/er/x.txt": b"x" * 10,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_folder_round_trip_with_digests(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    ref = store.put_dir(tmp_path / "src", s3_prefix)
    manifest = store.read_manifest(s3_prefix)
    assert ref.kind == "dir" and ref.digest == manifest.digest and ref.size == sum(map(len, files.values()))
    assert sorted(e.path for e in manifest.files) == sorted(files)
    for e in manifest.files:
        assert e.sha256 == sha256_file(tmp_path / "src" / e.path)

    back = store.get_dir(s3_prefix, tmp_path / "back")
    assert back.digest == ref.digest
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data
    # Same content uploaded elsewhere -> same digest: the digest names content, not place.
    assert store.put_dir(tmp_path / "src", s3_prefix + "-copy").digest == ref.digest
    assert store.verify(s3_prefix).digest == ref.digest


def test_manifest_is_written_last(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    order: list[str] = []
    real_put_file, real_put_bytes = store.put_file, store.put_bytes
    try:
        store.put_file = lambda src, uri, progress=None: (order.append(uri), real_put_file(src, uri))[1]  # type: ignore[method-assign]
        store.put_bytes = lambda data, uri, ct="": (order.append(uri), real_put_bytes(data, uri, ct))[1]  # type: ignore[method-assign]
        store.put_dir(tmp_path / "src", s3_prefix)
    finally:
        del store.put_file, store.put_bytes
    assert order[-1].endswith(MANIFEST_NAME) and len(order) == 5


def test_multipart_60mb(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(60 * 1024 * 1024))
    uri = join(s3_prefix, "big.bin")
    ref = store.put_file(big, uri)
    loc = parse_uri(uri)
    head = store.s3.head_object(Bucket=loc.bucket, Key=loc.key)
    # An S3 multipart ETag is "<md5 of part md5s>-<part count>": 60 MB at 16 MB parts -> 4 parts.
    assert head["ETag"].strip('"').endswith("-4")
    assert head["ContentLength"] == 60 * 1024 * 1024
    out = store.get_file(uri, tmp_path / "out.bin")
    assert sha256_file(out) == ref.digest == sha256_file(big)


def test_tampered_object_is_detected(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    store.put_dir(tmp_path / "src", s3_prefix)
    loc = parse_uri(join(s3_prefix, "config.json"))
    store.s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=b'{"layers": 7}')
    with pytest.raises(IntegrityError, match=r"config\.json: content does not match"):
        store.get_dir(s3_prefix, tmp_path / "back")
    assert not (tmp_path / "back").exists(), "a failed download must leave nothing behind"
    with pytest.raises(IntegrityError, match=r"config\.json: size or sha256 differs"):
        store.verify(s3_prefix)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_missing_object_is_detected(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    store.put_dir(tmp_path / "src", s3_prefix)
    loc = parse_uri(join(s3_prefix, "tok/tokenizer.json"))
    store.s3.delete_object(Bucket=loc.bucket, Key=loc.key)
    with pytest.raises(IntegrityError, match=r"tok/tokenizer\.json: listed in the manifest but missing"):
        store.get_dir(s3_prefix, tmp_path / "back")
    with pytest.raises(IntegrityError, match="missing"):
        store.verify(s3_prefix)


def test_edited_manifest_is_refused(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    store.put_dir(tmp_path / "src", s3_prefix)
    manifest = store.read_manifest(s3_prefix)
    forged = manifest.model_copy(update={"files": manifest.files[:-1]})
    store.put_bytes(forged.to_bytes(), join(s3_prefix, MANIFEST_NAME))
    with pytest.raises(IntegrityError, match="manifest digest does not match"):
        store.get_dir(s3_prefix, tmp_path / "back")
    # A consistent manifest that points outside its prefix is refused too.
    evil = Manifest.of(
        [e.model_copy(update={"path": "../../etc/x"}) if i == 0 else e for i, e in enumerate(manifest.files)]
    )
    store.put_bytes(evil.to_bytes(), join(s3_prefix, MANIFEST_NAME))
    with pytest.raises(StoreError, match="escapes"):
        store.get_dir(s3_prefix, tmp_path / "back2")


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "/etc/passwd", "a//b", "a/./b", "a\\b"])
def test_traversal_keys_are_refused(store: ArtifactStore, s3_prefix: str, tmp_path: Path, bad: str) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(StoreError, match="escapes|relative"):
        store.put_file(f, join(s3_prefix, bad))
    with pytest.raises(StoreError):
        join(str(tmp_path / "local"), bad)


def test_incomplete_prefix_is_not_an_artifact(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    f = tmp_path / "part.bin"
    f.write_bytes(b"half")
    store.put_file(f, join(s3_prefix, "part.bin"))  # files without a manifest: an upload that never finished
    with pytest.raises(IntegrityError, match=f"no {MANIFEST_NAME}"):
        store.get_dir(s3_prefix, tmp_path / "back")


def _one_line_error(func, match: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError) as info:
        func()
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 300, msg
    assert match in msg, msg
    return msg


def test_wrong_credentials_give_one_line_messages(
    stack_state: stack.StackState, s3_prefix: str, tmp_path: Path
) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    bad_secret = ArtifactStore(settings_for(stack_state, aws_secret_access_key="not-the-secret"))
    _one_line_error(lambda: bad_secret.put_file(f, join(s3_prefix, "f.txt")), "check AWS_SECRET_ACCESS_KEY")
    bad_key = ArtifactStore(settings_for(stack_state, aws_access_key_id="AKIANOSUCHKEY0000000"))
    _one_line_error(lambda: bad_key.get_bytes(join(s3_prefix, "f.txt")), "check AWS_ACCESS_KEY_ID")


def test_missing_bucket_gives_one_line_message(store: ArtifactStore, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    msg = _one_line_error(lambda: store.put_file(f, "s3://no-such-bucket-here/x/f.txt"), "does not exist")
    assert "bucket 'no-such-bucket-here'" in msg and "AMNESIA_BUCKET" in msg
    _one_line_error(lambda: store.put_dir(tmp_path, "s3://no-such-bucket-here/x"), "bucket 'no-such-bucket-here'")


def test_an_endpoint_that_is_not_s3_is_named_as_such(stack_state: stack.StackState, s3_prefix: str) -> None:
    """MLflow's address given as the S3 endpoint: its error pages (404 without auth; behind its basic-auth app a
    500, as it cannot parse an S3 signature) are not 'the object does not exist'."""
    st = ArtifactStore(settings_for(stack_state, s3_endpoint_url=stack_state.client_settings().mlflow_tracking_uri))
    for call in (lambda: st.get_bytes(join(s3_prefix, "k")), lambda: st.exists(join(s3_prefix, "k"))):
        msg = _one_line_error(call, "does not answer as an S3 server (HTTP ")
        assert "without S3 headers, server 'uvicorn'" in msg, msg
        assert "check AMNESIA_S3_ENDPOINT_URL" in msg and "does not exist" not in msg
    with pytest.raises(MissingError):  # the real server's 404 still means missing
        ArtifactStore(stack_state.client_settings()).get_bytes(join(s3_prefix, "k"))


def test_unreachable_endpoint_is_bounded(tmp_path: Path) -> None:
    port = stack.free_port()  # nothing listens there
    st = ArtifactStore(
        load_settings(
            s3_endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="a",
            aws_secret_access_key="b",
            s3_max_attempts=2,
            s3_connect_timeout=1,
        )
    )
    t0 = time.monotonic()
    _one_line_error(lambda: st.get_bytes("s3://b/k"), "unreachable or not answering after 2 attempts")
    assert time.monotonic() - t0 < 20


def test_server_stopped_mid_upload(tmp_path: Path) -> None:
    """SIGSTOP the S3 server while a folder uploads: bounded retries, a clear error, no manifest."""
    svc, ids = stack.start_s3(tmp_path / "s3", stack.free_port_pair(), ["stopped-upload"])
    try:
        st = ArtifactStore(
            load_settings(
                s3_endpoint_url=f"http://127.0.0.1:{svc.port}",
                aws_access_key_id=ids.admin.access_key_id,
                aws_secret_access_key=ids.admin.secret_access_key,
                s3_max_attempts=2,
                s3_connect_timeout=1,
                s3_read_timeout=1,
                s3_multipart_threshold_mb=5,
            )
        )
        src = tmp_path / "model"
        src.mkdir()
        for i in range(3):
            (src / f"shard-{i}.bin").write_bytes(os.urandom(6 * 1024 * 1024))
        sent, lock, stopped = [0], threading.Lock(), threading.Event()

        def progress(n: int) -> None:
            with lock:
                sent[0] += n
                if sent[0] > 8 * 1024 * 1024 and not stopped.is_set():
                    os.kill(svc.pid, signal.SIGSTOP)
                    stopped.set()

        t0 = time.monotonic()
        msg = _one_line_error(
            lambda: st.put_dir(src, "s3://stopped-upload/model", progress=progress),
            "unreachable or not answering after 2 attempts",
        )
        assert stopped.is_set() and "shard-" in msg
        assert time.monotonic() - t0 < 90, "retries must be bounded"
        os.kill(svc.pid, signal.SIGCONT)
        assert not st.exists(f"s3://stopped-upload/model/{MANIFEST_NAME}")
        with pytest.raises(IntegrityError, match="no _manifest.json"):
            st.get_dir("s3://stopped-upload/model", tmp_path / "back")
        # The retried task uploads again: what the interrupted upload left goes (objects it does not
        # overwrite, multipart uploads it never completed), so the folder is exactly the new one.
        st.put_bytes(b"left by an older attempt", "s3://stopped-upload/model/shard-9.bin")
        st.s3.create_multipart_upload(Bucket="stopped-upload", Key="model/shard-0.bin")
        st.put_dir(src, "s3://stopped-upload/model")
        names = [u.rsplit("/", 1)[1] for u in st.list("s3://stopped-upload/model")]
        assert names == sorted([MANIFEST_NAME, "shard-0.bin", "shard-1.bin", "shard-2.bin"])
        assert not st.s3.list_multipart_uploads(Bucket="stopped-upload", Prefix="model/").get("Uploads")
        st.get_dir("s3://stopped-upload/model", tmp_path / "back")  # complete and verified
    finally:
        os.kill(svc.pid, signal.SIGCONT)
        stack.stop(svc)


def test_local_backend_round_trip(tmp_path: Path) -> None:
    st = ArtifactStore(load_settings())
    files = _make_tree(tmp_path / "src")
    ref = st.put_dir(tmp_path / "src", str(tmp_path / "store" / "m"))
    assert (tmp_path / "store" / "m" / MANIFEST_NAME).exists()
    st.get_dir(str(tmp_path / "store" / "m"), tmp_path / "back")
    assert all((tmp_path / "back" / r).read_bytes() == d for r, d in files.items())
    (tmp_path / "store" / "m" / "config.json").write_bytes(b"{}")
    with pytest.raises(IntegrityError, match="config.json"):
        st.verify(str(tmp_path / "store" / "m"))
    assert ref.digest == Manifest.model_validate_json((tmp_path / "back" / MANIFEST_NAME).read_text()).digest


def test_get_dir_refuses_to_overwrite(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    store.put_dir(tmp_path / "src", s3_prefix)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "mine.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty"):
        store.get_dir(s3_prefix, tmp_path / "dst")
    assert (tmp_path / "dst" / "mine.txt").read_text() == "keep me"


def test_fetch_dir_caches_by_digest(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    ref = store.put_dir(tmp_path / "src", s3_prefix)
    first = store.fetch_dir(s3_prefix, tmp_path / "cache")
    assert first.name == ref.digest
    stamp = (first / "config.json").stat().st_mtime_ns
    assert store.fetch_dir(s3_prefix, tmp_path / "cache") == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not downloaded again


def test_single_file_integrity(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    uri = join(s3_prefix, "report.json")
    ref = store.put_json({"a": 1}, uri)
    assert store.get_json(uri) == {"a": 1}
    with pytest.raises(IntegrityError):
        store.get_bytes(uri, sha256="0" * 64)
    assert ref.digest != "0" * 64
