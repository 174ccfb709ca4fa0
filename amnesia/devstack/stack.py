"""The local stack: SeaweedFS (S3) and an MLflow tracking server, on 127.0.0.1 only, data kept on disk.

Each server is its own process in its own process group, so `down` can stop it whole (MLflow
forks workers) and nothing else. State (pids, ports, credentials, logs) lives in `home`; the object
store's data and identities under `home/s3` and MLflow's database in `home/mlflow.db` survive `down`
and `up` again, and go only with `purge`. SeaweedFS checks signatures against its identities file, so
wrong credentials fail here exactly as they would against AWS; every S3 request is written to the
access log `home/logs/s3-audit.jsonl` (`amnesia stack logs audit`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from amnesia.core.errors import StackError
from amnesia.core.privacy import disable_telemetry
from amnesia.core.settings import Settings
from amnesia.devstack import seaweed

HOST = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REGION = "us-east-1"
STATE_FILE = "stack.json"
MLFLOW_BUCKET = "amnesia-mlflow"
# MLflow's basic-auth users the stack makes: its admin, the pipeline's identity, a read-only auditor.
MLFLOW_ADMIN, MLFLOW_RUNNER, MLFLOW_AUDITOR = "amnesia-admin", "amnesia-runner", "amnesia-auditor"
USERS_FILE = "mlflow-users.json"  # their passwords (owner-only; survives `down`, goes with `purge`)
AUTH_DB = "mlflow-auth.db"
AUDIT_LOG = "s3-audit.jsonl"
_S3_GRACE_S = 30.0  # SeaweedFS flushes and leaves its cluster on SIGTERM: ~12 s on 2 cores


class Service(BaseModel):
    name: str
    pid: int
    start_ticks: int  # /proc start time: tells our process from a later one that reused the pid
    port: int
    log: str
    ports: dict[str, int] = {}  # the other listeners of a multi-port server (SeaweedFS)


class StackState(BaseModel):
    home: str
    s3: Service
    mlflow: Service
    review: Service | None = None  # the reviewers' page (`amnesia serve`)
    audit: Service | None = None
    watchdog: Service | None = None
    access_key_id: str
    secret_access_key: str
    auditor_key_id: str | None = None
    auditor_secret: str | None = None
    buckets: list[str]

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3.port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow.port}"

    @property
    def review_url(self) -> str | None:
        return f"http://{HOST}:{self.review.port}" if self.review else None

    def password(self, user: str) -> str:
        """The password of an MLflow user this stack made (`amnesia stack user add`)."""
        users = _users(Path(self.home))["users"]
        if user not in users:
            raise StackError(f"the local stack made no MLflow user {user!r} (`amnesia stack user add {user}`)")
        return str(users[user])

    def mlflow_auth(self, user: str = MLFLOW_ADMIN):  # type: ignore[no-untyped-def]
        from amnesia.governance.identity import MlflowAuth

        return MlflowAuth(self.tracking_uri, user, self.password(user))

    @property
    def audit_log(self) -> Path:
        return Path(self.home) / "logs" / AUDIT_LOG

    def services(self) -> list[Service]:
        """Everything `up` started, in the order `down` stops it."""
        return [s for s in (self.watchdog, self.review, self.mlflow, self.s3, self.audit) if s is not None]

    def client_settings(self, base: Settings | None = None, **overrides: object) -> Settings:
        """Settings that reach this stack: its endpoints and key over `base` (home, bucket, ...)."""
        from amnesia.core.settings import load_settings

        values: dict[str, object] = (base.model_dump() if base else {}) | {
            "home": self.home,
            "bucket": self.buckets[0],
            "s3_endpoint_url": self.s3_endpoint,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "mlflow_tracking_uri": self.tracking_uri,
            "mlflow_tracking_username": MLFLOW_RUNNER,
            "mlflow_tracking_password": self.password(MLFLOW_RUNNER),
        }
        return load_settings(**(values | overrides))

    def env(self, role: str = "admin", user: str | None = None) -> dict[str, str]:
        """The variables a client (CLI, component, test) needs to use this stack: role 'admin' is the
        pipeline (S3 admin, MLflow user amnesia-runner), 'auditor' reads only, 'service' is the reviewers'
        page (MLflow admin). `user`: act as that MLflow user instead (a reviewer at the CLI)."""
        key, secret = (self.access_key_id, self.secret_access_key)
        mlflow_user = {"admin": MLFLOW_RUNNER, "auditor": MLFLOW_AUDITOR, "service": MLFLOW_ADMIN}[role]
        if role == "auditor":
            if self.auditor_key_id is None or self.auditor_secret is None:
                raise StackError("this stack has no auditor identity (its identities file predates it)")
            key, secret = self.auditor_key_id, self.auditor_secret
        env = {
            "AMNESIA_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": user or mlflow_user,
            "MLFLOW_TRACKING_PASSWORD": self.password(user or mlflow_user),
            "AMNESIA_BUCKET": self.buckets[0],
        }
        if self.review_url:
            env["AMNESIA_REVIEW_URL"] = self.review_url
        if role != "auditor":  # the runs' data keys (sealing); an auditor verifies ciphertext without them
            env["AMNESIA_KEYSTORE"] = f"file:{(Path(self.home) / 'keys' / 'data-keys.json').resolve()}"
        return env


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
    if not _port_free(port):
        raise StackError(
            f"{HOST}:{port} is already in use by another process; free it or set {setting} (0 picks a free port)"
        )
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
    """The stack in `home` if every server is up and healthy, else None."""
    state = read_state(home)
    if state is None or not all(_alive(svc) for svc in state.services() if svc.name != "watchdog"):
        return None
    if state.audit is not None and not _listening(state.audit.port):
        return None
    if _healthy(f"{state.s3_endpoint}/status") and _healthy(f"{state.tracking_uri}/health"):
        return state
    return None


# ---------------------------------------------------------------- the object store


def s3_dir(home: Path) -> Path:
    """Where the local object store keeps its data and identities (survives `down`; `purge` wipes it)."""
    return Path(home) / "s3"


def _port_pair(reserved: set[int]) -> int:
    """A free port P with P + 10000 free too (SeaweedFS puts a component's gRPC there); both are added
    to `reserved`, so successive calls never hand out the same port."""
    for _ in range(200):
        port = free_port()
        if port + seaweed.GRPC_OFFSET > 65535 or {port, port + seaweed.GRPC_OFFSET} & reserved:
            continue
        if _port_free(port + seaweed.GRPC_OFFSET):
            reserved |= {port, port + seaweed.GRPC_OFFSET}
            return port
    raise StackError("found no free pair of loopback ports (P, P+10000) for SeaweedFS")


def _port_free(port: int) -> bool:
    """Could a server listen here? (SO_REUSEADDR as servers set it: a port left in TIME_WAIT counts as free.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free loopback port whose +10000 is free too: what start_s3 needs for a port of its own."""
    return _port_pair(set())


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def _s3_client(endpoint: str, cred: seaweed.Credentials):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10),
        aws_access_key_id=cred.access_key_id,
        aws_secret_access_key=cred.secret_access_key,
    )


def _ensure_buckets(endpoint: str, cred: seaweed.Credentials, buckets: Iterable[str], timeout_s: float) -> None:
    """Create the buckets that are missing; SeaweedFS may answer /status before it accepts a signed call."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = _s3_client(endpoint, cred)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            for bucket in buckets:
                if bucket not in have:
                    s3.create_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or time.monotonic() > deadline:
                raise StackError(f"S3 set-up failed: {err}") from None
            time.sleep(0.3)


def start_s3(
    directory: Path,
    port: int,
    buckets: Iterable[str],
    timeout_s: float = 60.0,
    audit_port: int | None = None,
    log: Path | None = None,
) -> tuple[Service, seaweed.Identities]:
    """Start SeaweedFS (`weed mini`) with its data and identities in `directory`; returns it and its keys.

    On a first start the identities file is generated (0600); later starts reuse it, and the data.
    The server's log goes to `log` (default: directory/s3.log).
    """
    directory = Path(directory).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ids = seaweed.load_or_create_identities(directory / "identities.json")
    grpc = port + seaweed.GRPC_OFFSET
    if grpc > 65535 or not _port_free(grpc):
        raise StackError(f"{HOST}:{grpc} (the S3 gRPC port = S3 port + 10000) is not free; set AMNESIA_S3_PORT")
    reserved = {port, grpc}
    ports = {name: _port_pair(reserved) for name in seaweed.COMPONENTS}
    audit_file = None
    if audit_port is not None:
        audit_file = directory / "audit-config.json"
        audit_file.write_text(json.dumps(seaweed.audit_config(audit_port, HOST)))
    cmd = seaweed.mini_command(directory / "data", directory / "identities.json", port, ports, HOST, audit_file)
    log = log or directory / "s3.log"
    svc = _spawn("s3", cmd, log, _base_env(), port)
    svc.ports = ports
    try:
        _wait_healthy(svc, f"http://{HOST}:{port}/status", timeout_s)
        _ensure_buckets(f"http://{HOST}:{port}", ids.admin, buckets, timeout_s)
    except StackError as err:
        stop(svc)
        raise StackError(f"{err}; log tail: {_tail(log)}" if "log tail" not in str(err) else str(err)) from None
    return svc, ids


def stop(svc: Service) -> bool:
    """Stop one service started here (public for tests that run a private server)."""
    return _stop(svc, _S3_GRACE_S if svc.name == "s3" else 10.0)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return dict(disable_telemetry(env))  # every server of the stack: MLflow's included


# ---------------------------------------------------------------- up / down


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
    # SeaweedFS puts the S3 gateway's gRPC at port + 10000: a free port is picked as a pair.
    s3_port = free_port_pair() if settings.s3_port == 0 else _claim_port(settings.s3_port, "AMNESIA_S3_PORT")
    mlflow_port = _claim_port(settings.mlflow_port, "AMNESIA_MLFLOW_PORT")
    review_port = _claim_port(settings.review_port, "AMNESIA_REVIEW_PORT")
    if len({s3_port, mlflow_port, review_port}) < 3:
        raise StackError("AMNESIA_S3_PORT, AMNESIA_MLFLOW_PORT and AMNESIA_REVIEW_PORT must differ; pick three ports")
    logs = home / "logs"

    # The access-log receiver first: SeaweedFS connects to it when its S3 gateway starts.
    audit_port = free_port()
    audit_cmd = [sys.executable, "-m", "amnesia.storage.access_log", "--port", str(audit_port),
                 "--out", str(logs / AUDIT_LOG)]  # fmt: skip
    audit = _spawn("audit", audit_cmd, logs / "s3-audit-receiver.log", _base_env(), audit_port)
    started: list[Service] = [audit]
    try:
        _wait_listening(audit, timeout_s)
        s3, ids = start_s3(s3_dir(home), s3_port, bucket_list + [MLFLOW_BUCKET], timeout_s, audit_port, logs / "s3.log")
        started.append(s3)
        mlflow = _start_mlflow(home, mlflow_port, s3_port, ids.admin, timeout_s)
        started.append(mlflow)
        state = StackState(
            home=str(home),
            s3=s3,
            mlflow=mlflow,
            audit=audit,
            access_key_id=ids.admin.access_key_id,
            secret_access_key=ids.admin.secret_access_key,
            auditor_key_id=ids.auditor.access_key_id if ids.auditor else None,
            auditor_secret=ids.auditor.secret_access_key if ids.auditor else None,
            buckets=bucket_list,
        )
        _ensure_mlflow_users(state)
        state.review = _start_review(state, review_port, timeout_s)
    except BaseException:
        for svc in reversed(started):
            stop(svc)
        raise
    if owner_pid is not None or ttl_s is not None:
        state.watchdog = _spawn_watchdog(state, owner_pid, ttl_s)
    _write_state(state)
    return state


def _wait_listening(svc: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _listening(svc.port):
        if not _alive(svc) or time.monotonic() > deadline:
            tail = _tail(Path(svc.log))
            raise StackError(f"{svc.name} did not start listening on {HOST}:{svc.port}; log tail: {tail}")
        time.sleep(0.1)


def _users(home: Path) -> dict[str, Any]:
    """The stack's MLflow users and their passwords, and the MLflow UI's CSRF key: made once, kept 0600."""
    path = Path(home) / USERS_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    doc = {"secret_key": secrets.token_urlsafe(32),
           "users": {u: secrets.token_urlsafe(18) for u in (MLFLOW_ADMIN, MLFLOW_RUNNER, MLFLOW_AUDITOR)}}  # fmt: skip
    _write_private(path, json.dumps(doc, indent=2))
    return doc


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def add_user(home: Path, user: str) -> str:
    """Make an MLflow user on the running local stack (idempotent); returns its password."""
    state = running(Path(home).resolve())
    if state is None:
        raise StackError("the local stack is not running (`amnesia stack up`)")
    doc = _users(Path(state.home))
    if user not in doc["users"]:
        if state.mlflow_auth().user(user) is not None:
            raise StackError(f"MLflow already has a user {user!r} that this stack did not make; pick another name")
        doc["users"][user] = secrets.token_urlsafe(18)
        state.mlflow_auth().create_user(user, doc["users"][user])
        _write_private(Path(state.home) / USERS_FILE, json.dumps(doc, indent=2))
    return str(doc["users"][user])


def _ensure_mlflow_users(state: StackState) -> None:
    """The runner and auditor exist in MLflow. Experiments and models made before the stack had auth
    belong to nobody: the runner gets MANAGE on them so the pipeline keeps writing where it did."""
    admin = state.mlflow_auth()
    fresh = False
    for user in (MLFLOW_RUNNER, MLFLOW_AUDITOR):
        if admin.user(user) is None:
            admin.create_user(user, state.password(user))
            fresh = True
    if not fresh:
        return
    models, experiments = admin.resources()
    for model in models:
        admin.grant(MLFLOW_RUNNER, model, "MANAGE")
    for experiment in experiments:
        admin.grant(MLFLOW_RUNNER, experiment, "MANAGE", resource_type="experiment")


def _auth_config(home: Path) -> Path:
    """MLflow's basic-auth app config: users in their own database, READ for whoever has no grant."""
    path = home / "mlflow-auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / AUTH_DB}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without the cache every request pays a password hash (tens of ms): the pipeline makes thousands.
        "auth_cache_ttl_seconds = 300\n"
    )
    return path


def _start_mlflow(home: Path, port: int, s3_port: int, cred: seaweed.Credentials, timeout_s: float) -> Service:
    users = _users(home)
    env = _base_env() | {
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(home)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": users["users"][MLFLOW_ADMIN],  # read only when the auth database is new
        "MLFLOW_FLASK_SERVER_SECRET_KEY": users["secret_key"],
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{s3_port}",
        "AWS_ACCESS_KEY_ID": cred.access_key_id,
        "AWS_SECRET_ACCESS_KEY": cred.secret_access_key,
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
        f"s3://{MLFLOW_BUCKET}/artifacts",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
    ]
    mlflow = _spawn("mlflow", cmd, home / "logs" / "mlflow.log", env, port)
    _wait_healthy(mlflow, f"http://{HOST}:{port}/health", timeout_s)
    return mlflow


def _start_review(state: StackState, port: int, timeout_s: float) -> Service:
    """The reviewers' page, as the MLflow admin (it reads any reviewer's permissions; each decision is
    authorized for the signed-in person)."""
    env = _base_env() | state.env("service") | {"AMNESIA_HOME": state.home}
    cmd = [sys.executable, "-m", "amnesia.cli", "serve", "--host", HOST, "--port", str(port)]
    review = _spawn("review", cmd, Path(state.home) / "logs" / "review.log", env, port)
    _wait_healthy(review, f"http://{HOST}:{port}/health", timeout_s)
    return review


def _spawn_watchdog(state: StackState, owner_pid: int | None, ttl_s: float | None) -> Service:
    cmd = [sys.executable, "-m", "amnesia.devstack.watchdog", "--grace", str(_S3_GRACE_S)]
    for svc in state.services():
        cmd += ["--pgid", str(svc.pid)]
    if owner_pid is not None:
        cmd += ["--owner", str(owner_pid)]
    if ttl_s is not None:
        cmd += ["--ttl", str(ttl_s)]
    return _spawn("watchdog", cmd, Path(state.home) / "logs" / "watchdog.log", _base_env())


def down(home: Path) -> list[str]:
    """Stop exactly what `up` started in `home` (checked by pid and start time). Returns their names.

    The data stays: `up` again serves the same objects, runs and model versions.
    """
    home = Path(home).resolve()
    state = read_state(home)
    if state is None:
        return []
    stopped = [svc.name for svc in state.services() if stop(svc)]
    state_path(home).unlink(missing_ok=True)
    return stopped


def stored_data(home: Path) -> list[Path]:
    """What `purge` deletes: the object store (data + identities), MLflow's database, logs, the access log."""
    home = Path(home).resolve()
    candidates = [s3_dir(home), home / "mlflow.db", home / AUTH_DB, home / USERS_FILE, home / "logs",
                  home / "kfp-local", home / "cache"]  # fmt: skip
    return [p for p in candidates if p.exists()]


def purge(home: Path) -> list[Path]:
    """Stop the stack and delete everything it stored. Irreversible: the CLI asks first."""
    down(home)
    gone = stored_data(home)
    for path in gone:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return gone


def status(home: Path) -> dict[str, object]:
    """A small report for `amnesia stack status`."""
    home = Path(home).resolve()
    state = read_state(home)
    if state is None:
        return {"running": False, "data": str(s3_dir(home)), "data_present": s3_dir(home).exists()}
    return {
        "running": running(home) is not None,
        "s3": {
            "endpoint": state.s3_endpoint,
            "pid": state.s3.pid,
            "alive": _alive(state.s3),
            "data": str(s3_dir(home)),
            "ports": state.s3.ports,
        },
        "mlflow": {"tracking_uri": state.tracking_uri, "pid": state.mlflow.pid, "alive": _alive(state.mlflow)},
        "review": {"url": state.review_url, "alive": state.review is not None and _alive(state.review)},
        "audit_log": str(state.audit_log),
        "buckets": state.buckets,
    }


def log_file(home: Path, name: str) -> Path:
    """A stack log by name: s3, mlflow, audit (the S3 access log) or watchdog."""
    logs = Path(home).resolve() / "logs"
    files = {"s3": logs / "s3.log", "mlflow": logs / "mlflow.log", "audit": logs / AUDIT_LOG,
             "watchdog": logs / "watchdog.log", "review": logs / "review.log"}  # fmt: skip
    if name not in files:
        raise StackError(f"no stack log named {name!r}; choose one of {', '.join(files)}")
    return files[name]


def activate(home: Path) -> StackState | None:
    """Point this process at the running local stack, unless the environment already names servers."""
    state = running(Path(home).resolve())
    if state is not None:
        for key, value in state.env().items():
            os.environ.setdefault(key, value)
    return state
