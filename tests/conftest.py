"""Shared fixtures: one real local stack (S3-compatible server + MLflow) for the whole session.

The stack binds to 127.0.0.1 on free ports and has a watchdog: it stops when this pytest process
ends, even if teardown never runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from amnesia import stack
from amnesia.settings import Settings, load_settings
from amnesia.storage import ArtifactStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackState]:
    home = tmp_path_factory.mktemp("stack")
    state = stack.up(load_settings(home=home, s3_port=0, mlflow_port=0), owner_pid=os.getpid(), ttl_s=3 * 3600)
    saved = {k: os.environ.get(k) for k in state.env()}
    os.environ.update(state.env())  # subprocesses (CLI, kfp.local tasks) reach the same stack
    yield state
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stack.down(home)


def settings_for(state: stack.StackState, **overrides: object) -> Settings:
    env = state.env()
    values: dict[str, object] = {
        "home": state.home,
        "s3_endpoint_url": env["AMNESIA_S3_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "mlflow_tracking_uri": env["MLFLOW_TRACKING_URI"],
        "bucket": env["AMNESIA_BUCKET"],
    }
    return load_settings(**(values | overrides))


@pytest.fixture(scope="session")
def stack_settings(stack_state: stack.StackState) -> Settings:
    return settings_for(stack_state)


@pytest.fixture(scope="session")
def store(stack_settings: Settings) -> ArtifactStore:
    return ArtifactStore(stack_settings)


@pytest.fixture
def s3_prefix(stack_settings: Settings, request: pytest.FixtureRequest) -> str:
    """A fresh s3:// prefix per test."""
    import uuid

    return f"s3://{stack_settings.bucket}/tests/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or AMNESIA_SHARED_DATA); tests that need it fail loudly when it is absent."""
    path = Path(os.environ.get("AMNESIA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (path / "mmlu").is_dir():
        pytest.fail(f"shared data not found at {path} (set AMNESIA_SHARED_DATA to the folder holding mmlu/)")
    return path
