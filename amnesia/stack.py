"""The local stack: a real S3-compatible server and an MLflow tracking server, on 127.0.0.1 only.

Each server is its own process in its own process group, so `down` can stop it whole (MLflow
forks workers) and nothing else. State (pids, ports, credentials, logs) lives in `home`.
The S3 server checks signatures: `up` creates an IAM user and uses its key, so wrong
credentials fail here exactly as they would against AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from amnesia.errors import StackError
from amnesia.settings import Settings

HOST = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REGION = "us-east-1"
STATE_FILE = "stack.json"
# IAM calls made before signature checks start: CreateUser, PutUserPolicy, CreateAccessKey.
_BOOTSTRAP_ACTIONS = 3
_ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


class Service(BaseModel):
    name: str
    pid: int
    start_ticks: int  # /proc start time: tells our process from a later one that reused the pid
    port: int
    log: str


class StackState(BaseModel):
    home: str
    s3: Service
    mlflow: Service
    watchdog: Service | None = None
    access_key_id: str
    secret_access_key: str
    buckets: list[str]

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3.port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow.port}"

    def client_settings(self, base: Settings | None = None, **overrides: object) -> Settings:
        """Settings that reach this stack: its endpoints and key over `base` (home, bucket, ...)."""
        from amnesia.settings import load_settings

        values: dict[str, object] = (base.model_dump() if base else {}) | {
            "home": self.home,
            "bucket": self.buckets[0],
            "s3_endpoint_url": self.s3_endpoint,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "mlflow_tracking_uri": self.tracking_uri,
        }
        return load_settings(**(values | overrides))

    def env(self) -> dict[str, str]:
        """The variables a client (CLI, component, test) needs to use this stack."""
        return {
            "AMNESIA_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "AMNESIA_BUCKET": self.buckets[0],
        }


# ---------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the ')' that closes the command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(svc: Service) -> bool:
    ticks = _start_ticks(svc.pid)
    if ticks is None or ticks != svc.start_ticks:
        return False
    state = Path(f"/proc/{svc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _spawn(name: str, cmd: list[str], log: Path, env: dict[str, str], port: int = 0) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    ticks = _start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{name} exited at once; log tail: {_tail(log)}")
    return Service(name=name, pid=proc.pid, start_ticks=ticks, port=port, log=str(log))


def _stop(svc: Service, grace_s: float = 10.0) -> bool:
    """Stop a service's whole process group; only if the pid is still the process we started."""
    if not _alive(svc):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(svc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(svc.pid):
        time.sleep(0.1)
    if _group_alive(svc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(svc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(svc.pid, os.WNOHANG)  # reap if it was our child
    return True


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _tail(log: Path, lines: int = 12) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    clean = (_ANSI.sub("", line).strip() for line in text)
    return " | ".join(line for line in clean if line) or "(empty log)"


# ---------------------------------------------------------------- ports and health


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _claim_port(port: int, setting: str) -> int:
    if port == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise StackError(
                f"{HOST}:{port} is already in use by another process; free it or set {setting} (0 picks a free port)"
            ) from None
    return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_healthy(svc: Service, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if not _alive(svc):
            raise StackError(f"{svc.name} exited during start-up; log tail: {_tail(Path(svc.log))}")
        time.sleep(0.25)
    _stop(svc)
    raise StackError(f"{svc.name} did not answer {url} within {timeout_s:.0f}s; log tail: {_tail(Path(svc.log))}")


# ---------------------------------------------------------------- state


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def read_state(home: Path) -> StackState | None:
    path = state_path(home)
    if not path.exists():
        return None
    try:
        return StackState.model_validate_json(path.read_text())
    except ValueError as err:
        raise StackError(f"{path}: unreadable stack state ({err.__class__.__name__}); remove it") from None


def _write_state(state: StackState) -> None:
    path = state_path(Path(state.home))
    tmp = path.with_suffix(".tmp")
    # The file holds the stack's S3 secret: owner-only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(state.model_dump_json(indent=2))
    os.replace(tmp, path)


def running(home: Path) -> StackState | None:
    """The stack in `home` if both servers are up and healthy, else None."""
    state = read_state(home)
    if state is None or not (_alive(state.s3) and _alive(state.mlflow)):
        return None
    if _healthy(f"{state.s3_endpoint}/moto-api/") and _healthy(f"{state.tracking_uri}/health"):
        return state
    return None


# ---------------------------------------------------------------- up / down


def _bootstrap_s3(endpoint: str, buckets: Iterable[str]) -> tuple[str, str]:
    """Create the IAM user whose key signs every later request, then the buckets."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 2, "mode": "standard"})
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        config=cfg,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="amnesia")
    iam.put_user_policy(UserName="amnesia", PolicyName="all", PolicyDocument=_ADMIN_POLICY)
    key = iam.create_access_key(UserName="amnesia")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=cfg,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    return key["AccessKeyId"], key["SecretAccessKey"]


def start_s3(log: Path, port: int, buckets: Iterable[str], timeout_s: float = 60.0) -> tuple[Service, str, str]:
    """Start the S3-compatible server alone (signature checks on); returns it and its access key."""
    env = _base_env() | {"INITIAL_NO_AUTH_ACTION_COUNT": str(_BOOTSTRAP_ACTIONS)}
    s3 = _spawn("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], log, env, port)
    try:
        _wait_healthy(s3, f"http://{HOST}:{port}/moto-api/", timeout_s)
        key_id, secret = _bootstrap_s3(f"http://{HOST}:{port}", buckets)
    except Exception as err:
        _stop(s3)
        if isinstance(err, StackError):
            raise
        raise StackError(f"S3 server set-up failed: {err}; log tail: {_tail(log)}") from None
    return s3, key_id, secret


def stop(svc: Service) -> bool:
    """Stop one service started here (public for tests that run a private server)."""
    return _stop(svc)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def up(
    settings: Settings,
    *,
    buckets: Iterable[str] | None = None,
    owner_pid: int | None = None,
    ttl_s: float | None = None,
    timeout_s: float = 90.0,
) -> StackState:
    """Start the stack in settings.home, or return the one already running there (idempotent).

    owner_pid / ttl_s start a watchdog that stops the stack when that process ends or the time
    is up, so servers started by tests stop by themselves even if the test run is killed.
    """
    home = Path(settings.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    current = running(home)
    if current is not None:
        return current
    down(home)  # a half-dead earlier stack: clear what is left of it

    bucket_list = list(dict.fromkeys(buckets or [settings.bucket]))
    s3_port = _claim_port(settings.s3_port, "AMNESIA_S3_PORT")
    mlflow_port = _claim_port(settings.mlflow_port, "AMNESIA_MLFLOW_PORT")
    if mlflow_port == s3_port:
        raise StackError(f"AMNESIA_S3_PORT and AMNESIA_MLFLOW_PORT are both {s3_port}; pick two ports")
    logs = home / "logs"

    s3, key_id, secret = start_s3(logs / "s3.log", s3_port, bucket_list + ["amnesia-mlflow"], timeout_s)

    mlflow_env = _base_env() | {
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{s3_port}",
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
        # Otherwise MLflow starts job workers that outlive the server process.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        "s3://amnesia-mlflow/artifacts",
        "--host",
        HOST,
        "--port",
        str(mlflow_port),
        "--workers",
        "1",
    ]
    mlflow = _spawn("mlflow", cmd, logs / "mlflow.log", mlflow_env, mlflow_port)
    try:
        _wait_healthy(mlflow, f"http://{HOST}:{mlflow_port}/health", timeout_s)
    except StackError:
        _stop(s3)
        raise

    state = StackState(
        home=str(home), s3=s3, mlflow=mlflow, access_key_id=key_id, secret_access_key=secret, buckets=bucket_list
    )
    if owner_pid is not None or ttl_s is not None:
        state.watchdog = _spawn_watchdog(state, owner_pid, ttl_s)
    _write_state(state)
    return state


def _spawn_watchdog(state: StackState, owner_pid: int | None, ttl_s: float | None) -> Service:
    cmd = [sys.executable, "-m", "amnesia.watchdog", "--pgid", str(state.s3.pid), "--pgid", str(state.mlflow.pid)]
    if owner_pid is not None:
        cmd += ["--owner", str(owner_pid)]
    if ttl_s is not None:
        cmd += ["--ttl", str(ttl_s)]
    return _spawn("watchdog", cmd, Path(state.home) / "logs" / "watchdog.log", _base_env())


def down(home: Path) -> list[str]:
    """Stop exactly what `up` started in `home` (checked by pid and start time). Returns their names."""
    home = Path(home).resolve()
    state = read_state(home)
    if state is None:
        return []
    stopped = [svc.name for svc in (state.watchdog, state.mlflow, state.s3) if svc is not None and _stop(svc)]
    state_path(home).unlink(missing_ok=True)
    return stopped


def status(home: Path) -> dict[str, object]:
    """A small report for `amnesia stack status`."""
    state = read_state(Path(home).resolve())
    if state is None:
        return {"running": False}
    return {
        "running": running(Path(home).resolve()) is not None,
        "s3": {"endpoint": state.s3_endpoint, "pid": state.s3.pid, "alive": _alive(state.s3)},
        "mlflow": {"tracking_uri": state.tracking_uri, "pid": state.mlflow.pid, "alive": _alive(state.mlflow)},
        "buckets": state.buckets,
    }


def activate(home: Path) -> StackState | None:
    """Point this process at the running local stack, unless the environment already names servers."""
    state = running(Path(home).resolve())
    if state is not None:
        for key, value in state.env().items():
            os.environ.setdefault(key, value)
    return state
