"""`amnesia stack up|status|down` as a user runs it: real processes on loopback, nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from amnesia.core.errors import StackError, StoreError
from amnesia.core.settings import load_settings
from amnesia.devstack import stack
from amnesia.storage import access_log as s3audit
from amnesia.storage.artifacts import ArtifactStore
from tests.conftest import settings_for

AMNESIA = [sys.executable, "-m", "amnesia.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    ports = {"AMNESIA_S3_PORT": "0", "AMNESIA_MLFLOW_PORT": "0", "AMNESIA_REVIEW_PORT": "0"}
    return env | {"AMNESIA_HOME": str(home)} | ports | extra


def _run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(AMNESIA + args, env=env, capture_output=True, text=True, timeout=180, check=check)


def _group_members(pgid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(proc.name))
    return out


def test_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    up = _run(["stack", "up"], env)
    assert "buckets: amnesia, amnesia-mlflow" in up.stdout
    state = stack.read_state(tmp_path / "home")
    assert state is not None

    # Bucket listing with the stack's own key; MLflow /health; both on loopback only.
    s3 = boto3.client(
        "s3",
        endpoint_url=state.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=state.access_key_id,
        aws_secret_access_key=state.secret_access_key,
    )
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"amnesia", "amnesia-mlflow"}
    with urllib.request.urlopen(f"{state.tracking_uri}/health", timeout=5) as resp:
        assert resp.status == 200
    assert state.s3_endpoint.startswith("http://127.0.0.1:") and state.tracking_uri.startswith("http://127.0.0.1:")
    assert oct((tmp_path / "home" / "stack.json").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "home" / "mlflow-users.json").stat().st_mode & 0o777) == "0o600"
    # MLflow runs its basic-auth app: no credentials, no API; the runner's work.
    api = f"{state.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(api, timeout=5)
    assert state.mlflow_auth(stack.MLFLOW_RUNNER).current_user().username == "amnesia-runner"
    with urllib.request.urlopen(f"{state.review_url}/health", timeout=5) as resp:  # the reviewers' page
        assert resp.status == 200 and state.review_url.startswith("http://127.0.0.1:")

    # up again: same processes (idempotent).
    _run(["stack", "up"], env)
    again = stack.read_state(tmp_path / "home")
    assert again is not None and again.s3.pid == state.s3.pid and again.mlflow.pid == state.mlflow.pid

    status = json.loads(_run(["stack", "status", "--json"], env).stdout)
    assert status["running"] is True
    exports = _run(["stack", "env"], env).stdout
    assert f"export MLFLOW_TRACKING_URI={state.tracking_uri}" in exports

    groups = [state.s3.pid, state.mlflow.pid, state.review.pid]
    assert all(_group_members(g) for g in groups)
    down = _run(["stack", "down"], env)
    assert "stopped: review, mlflow, s3" in down.stdout
    deadline = time.monotonic() + 10
    while any(_group_members(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_group_members(g) for g in groups), "stack down left processes behind"
    assert "nothing was running" in _run(["stack", "down"], env).stdout


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(["stack", "up"], _env(tmp_path / "home", AMNESIA_S3_PORT=str(port)), check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"Error: 127.0.0.1:{port} is already in use by another process; free it or set "
        "AMNESIA_S3_PORT (0 picks a free port)"
    ]
    assert stack.read_state(tmp_path / "home") is None


def test_down_spares_a_process_that_reused_a_pid(tmp_path: Path) -> None:
    """A state file whose pids now belong to someone else must not get them killed."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        fake = stack.Service(name="s3", pid=bystander.pid, start_ticks=1, port=1, log="x")
        state = stack.StackState(
            home=str(tmp_path),
            s3=fake,
            mlflow=fake.model_copy(update={"name": "mlflow"}),
            access_key_id="a",
            secret_access_key="b",
            buckets=["amnesia"],
        )
        (tmp_path / "stack.json").write_text(state.model_dump_json())
        assert stack.down(tmp_path) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()


def test_stack_stops_by_itself_when_its_owner_ends(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    state = stack.up(load_settings(home=tmp_path, s3_port=0, mlflow_port=0, review_port=0), owner_pid=owner.pid)
    try:
        owner.wait()
        deadline = time.monotonic() + 20
        while (_group_members(state.s3.pid) or _group_members(state.mlflow.pid)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not _group_members(state.s3.pid) and not _group_members(state.mlflow.pid)
    finally:
        stack.down(tmp_path)


@pytest.mark.parametrize("bad", [["--nope"], ["stack", "sideways"]])
def test_cli_usage_errors(tmp_path: Path, bad: list[str]) -> None:
    assert _run(bad, _env(tmp_path), check=False).returncode == 2


# ---------------------------------------------------------------- SeaweedFS: persistence, identities, access log


def _loopback_only(pid: int) -> list[str]:
    """The listening TCP sockets of `pid` that are NOT on 127.0.0.1 (from /proc: no `ss` needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    exposed, seen = [], 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                seen += 1
                if fields[1].split(":")[0] != "0100007F":
                    exposed.append(f"{table} {fields[1]}")
    assert seen >= 5, f"expected SeaweedFS's listeners, found {seen}"
    return exposed


def test_objects_credentials_and_runs_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(tmp_path / "home")
    _run(["stack", "up"], env)
    first = stack.read_state(tmp_path / "home")
    assert first is not None and first.audit is not None
    assert _loopback_only(first.s3.pid) == []
    identities = tmp_path / "home" / "s3" / "identities.json"
    assert oct(identities.stat().st_mode & 0o777) == "0o600"

    store = ArtifactStore(first.client_settings())
    src = tmp_path / "model"
    (src / "tok").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(200_000))
    (src / "tok" / "tokenizer.json").write_text('{"v": 1}')
    ref = store.put_dir(src, "s3://amnesia/models/kept")
    import mlflow

    for key, value in first.env().items():  # MLflow's users live in its auth database: they survive too
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(first.tracking_uri)
    with mlflow.start_run(experiment_id=mlflow.create_experiment("restart")) as run:
        mlflow.log_text("evidence", "evidence.txt")  # proxied into the object store

    down = _run(["stack", "down"], env)
    assert "stopped: review, mlflow, s3, audit" in down.stdout
    assert "stored data kept" in _run(["stack", "status"], env).stdout
    _run(["stack", "up"], env)
    second = stack.read_state(tmp_path / "home")
    assert second is not None and second.s3.pid != first.s3.pid
    # Same identities (reused, not regenerated), same objects, verified byte for byte.
    assert (second.access_key_id, second.secret_access_key) == (first.access_key_id, first.secret_access_key)
    store = ArtifactStore(second.client_settings())
    assert store.verify("s3://amnesia/models/kept").digest == ref.digest
    assert store.get_dir("s3://amnesia/models/kept", tmp_path / "back").digest == ref.digest
    mlflow.set_tracking_uri(second.tracking_uri)
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evidence.txt") == "evidence"
    stack.down(tmp_path / "home")


def test_auditor_identity_reads_but_cannot_write(stack_state: stack.StackState, s3_prefix: str) -> None:
    store = ArtifactStore(settings_for(stack_state))
    store.put_json({"a": 1}, f"{s3_prefix}/evidence.json")
    auditor = stack_state.env("auditor")
    assert auditor["AWS_ACCESS_KEY_ID"] != stack_state.access_key_id
    reader = ArtifactStore(settings_for(stack_state, aws_access_key_id=auditor["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=auditor["AWS_SECRET_ACCESS_KEY"]))  # fmt: skip
    assert reader.get_json(f"{s3_prefix}/evidence.json") == {"a": 1}
    with pytest.raises(StoreError, match="denied"):
        reader.put_json({"a": 2}, f"{s3_prefix}/evidence.json")
    assert store.get_json(f"{s3_prefix}/evidence.json") == {"a": 1}


def test_a_forget_set_read_is_in_the_access_log(stack_state: stack.StackState, s3_prefix: str) -> None:
    """Who read a forget set, and when: a read through the artifact store appears in `stack logs audit`."""
    store = ArtifactStore(settings_for(stack_state))
    uri = f"{s3_prefix}/split/forget_train.parquet"
    store.put_bytes(b"PAR1 not really", uri)
    store.get_bytes(uri)
    key = uri.split("/", 3)[3]
    found = s3audit.wait_for(
        stack_state.audit_log, lambda r: r.key == key and r.operation == "REST.GET.OBJECT" and r.status == 200
    )
    assert found is not None and found.requester == "amnesia" and found.bucket == "amnesia"
    env = _env(Path(stack_state.home))
    shown = _run(["stack", "logs", "audit", "--key", key], env).stdout.splitlines()
    assert any("REST.GET.OBJECT" in line and " amnesia " in line for line in shown), shown
    assert any("REST.PUT.OBJECT" in line for line in shown), shown
    # A request with a wrong secret is on record too, with its error code.
    bad = ArtifactStore(settings_for(stack_state, aws_secret_access_key="wrong", s3_max_attempts=1))
    with pytest.raises(StoreError):
        bad.get_bytes(uri)
    assert s3audit.wait_for(stack_state.audit_log, lambda r: r.key == key and r.error == "SignatureDoesNotMatch")


def test_purge_asks_and_then_wipes_the_store(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    _run(["stack", "up"], env)
    state = stack.read_state(tmp_path / "home")
    assert state is not None
    ArtifactStore(state.client_settings()).put_json({"x": 1}, "s3://amnesia/doomed.json")

    declined = subprocess.run(AMNESIA + ["stack", "down", "--purge"], env=env, input="n\n", capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert declined.returncode != 0 and "purge cancelled: nothing was deleted" in declined.stderr
    assert (tmp_path / "home" / "s3" / "identities.json").exists() and stack.running(tmp_path / "home")

    done = _run(["stack", "down", "--purge", "--yes"], env)
    assert "purged:" in done.stdout and not (tmp_path / "home" / "s3").exists()
    assert not (tmp_path / "home" / "mlflow.db").exists() and stack.read_state(tmp_path / "home") is None
    _run(["stack", "up"], env)
    fresh = stack.read_state(tmp_path / "home")
    assert fresh is not None and fresh.access_key_id != state.access_key_id  # new identities
    assert not ArtifactStore(fresh.client_settings()).exists("s3://amnesia/doomed.json")
    stack.down(tmp_path / "home")


def test_a_store_that_does_not_come_up_says_why_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "identities.json").write_text("{not json")
    with pytest.raises(StackError, match=r"identities\.json: unreadable identities file"):
        stack.start_s3(tmp_path / "s3", stack.free_port_pair(), ["b"])
    (tmp_path / "s3" / "identities.json").unlink()
    with pytest.raises(StackError) as info:
        stack.start_s3(tmp_path / "s3", stack.free_port_pair(), ["b"], timeout_s=0.05)
    msg = str(info.value)
    assert "\n" not in msg and "did not answer" in msg and "log tail:" in msg, msg


def test_a_store_from_before_auth_keeps_the_runner_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow data made when the stack had no auth belongs to nobody: the first start with auth gives the
    runner MANAGE on it (simulated by an experiment and a model made by the admin, then the users forgotten)."""
    from mlflow import MlflowClient

    settings = load_settings(home=tmp_path, s3_port=0, mlflow_port=0, review_port=0)
    state = stack.up(settings, owner_pid=os.getpid())

    def as_user(env: dict[str, str]) -> None:  # MLflow's client takes its identity from the environment only
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, env[key])

    try:
        as_user(state.env("service"))
        client = MlflowClient(state.tracking_uri)
        experiment = client.create_experiment("made-before-auth")
        client.create_registered_model("model-before-auth")
        runner = state.mlflow_auth(stack.MLFLOW_RUNNER)
        assert runner.permission(stack.MLFLOW_RUNNER, "model-before-auth") == "READ"
    finally:
        stack.down(tmp_path)
    (tmp_path / stack.AUTH_DB).unlink()  # no users, no grants: what MLflow had before the auth app
    state = stack.up(settings, owner_pid=os.getpid())
    try:
        assert state.mlflow_auth(stack.MLFLOW_RUNNER).permission(stack.MLFLOW_RUNNER, "model-before-auth") == "MANAGE"
        as_user(state.env())
        MlflowClient(state.tracking_uri).create_run(experiment)  # the pipeline writes where it did
    finally:
        stack.down(tmp_path)
