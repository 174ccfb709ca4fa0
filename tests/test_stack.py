"""`amnesia stack up|status|down` as a user runs it: real processes on loopback, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from amnesia import stack
from amnesia.settings import load_settings

AMNESIA = [sys.executable, "-m", "amnesia.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    return env | {"AMNESIA_HOME": str(home), "AMNESIA_S3_PORT": "0", "AMNESIA_MLFLOW_PORT": "0"} | extra


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

    # up again: same processes (idempotent).
    _run(["stack", "up"], env)
    again = stack.read_state(tmp_path / "home")
    assert again is not None and again.s3.pid == state.s3.pid and again.mlflow.pid == state.mlflow.pid

    status = json.loads(_run(["stack", "status", "--json"], env).stdout)
    assert status["running"] is True
    exports = _run(["stack", "env"], env).stdout
    assert f"export MLFLOW_TRACKING_URI={state.tracking_uri}" in exports

    groups = [state.s3.pid, state.mlflow.pid]
    assert all(_group_members(g) for g in groups)
    down = _run(["stack", "down"], env)
    assert "stopped: mlflow, s3" in down.stdout
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
    state = stack.up(load_settings(home=tmp_path, s3_port=0, mlflow_port=0), owner_pid=owner.pid)
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
