"""Registration (idempotent), approval by another person, rejection and history, against the real
MLflow server of the session stack."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from amnesia.lineage import Tag
from amnesia.registry import (
    CANDIDATE,
    CHAMPION,
    NOTE_SHA256,
    NOTE_URI,
    RegistryError,
    approve,
    history,
    register,
    reject,
)
from amnesia.requests import ErasureRequest, RequestQueue, canonical_jsonl
from amnesia.settings import Settings
from amnesia.storage import ArtifactStore, join


def _requests(n: int, tag: str) -> list[ErasureRequest]:
    return [
        ErasureRequest(
            request_id=f"req-{tag}-{i}",
            subject=f"Person {tag} {i}",
            received_at="2026-01-02T03:04:05Z",
            ground="a",
            document_ids=[f"doc-{tag}-{i}"],
        )  # fmt: skip
        for i in range(n)
    ]


def _tags(split_uri: str, request_digest: str) -> dict[str, str]:
    return {Tag.REQUEST_DIGEST: request_digest, Tag.BASE_MODEL_DIGEST: "b" * 64, Tag.SPLIT_URI: split_uri,
            Tag.GATE_PASSED: "true", Tag.METHOD: "sha256", Tag.LAYERS: "0,1"}  # fmt: skip


def test_register_approve_reject_history(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"amnesia-test-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    monkeypatch.setenv("AMNESIA_RUNNER", "pipeline-bot")
    queue = RequestQueue(store, s3_prefix)
    reqs = _requests(2, "a")
    queue.submit(reqs)
    split_uri = join(s3_prefix, "runs", "r1", "split")
    store.put_bytes(canonical_jsonl(reqs), join(split_uri, "requests.jsonl"))

    with pytest.raises(RegistryError, match="did not pass its gate"):
        register(stack_settings, name, "s3://x/m", _tags(split_uri, "r" * 64), {}, gate_passed=False)
    first = register(stack_settings, name, "s3://x/m1", _tags(split_uri, "r" * 64), {"final": 0.8}, gate_passed=True)
    again = register(stack_settings, name, "s3://x/m1b", _tags(split_uri, "r" * 64), {"final": 0.8}, gate_passed=True)
    assert first.created and not again.created and again.version == first.version
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    mv = client.get_model_version_by_alias(name, CANDIDATE)
    assert mv.version == first.version and mv.tags[Tag.STATUS] == "pending_approval"
    assert mv.tags["amnesia.metric.final"] == "0.8" and mv.tags["amnesia.runner"] == "pipeline-bot"

    with pytest.raises(RegistryError, match="pipeline-bot ran the pipeline"):
        approve(stack_settings, store, s3_prefix, name, first.version, "pipeline-bot", "looks fine")
    with pytest.raises(RegistryError, match="needs a note"):
        approve(stack_settings, store, s3_prefix, name, first.version, "alice", "  ")
    tags = approve(stack_settings, store, s3_prefix, name, first.version, "alice", "checked the report for Person a 0")
    assert client.get_model_version_by_alias(name, CHAMPION).version == first.version
    assert tags["amnesia.previous_champion"] == "none"
    note = store.get_json(tags[NOTE_URI])
    assert note["reviewer"] == "alice" and note["note"].endswith("Person a 0")  # the note is in S3 ...
    got = client.get_model_version(name, first.version).tags
    assert got[NOTE_SHA256] == tags[NOTE_SHA256] and "Person a 0" not in str(got)  # ... and not in MLflow
    assert [r.request_id for r in queue.list("fulfilled")] == ["req-a-0", "req-a-1"] and queue.list("pending") == []
    with pytest.raises(RegistryError, match="is approved, not pending"):
        approve(stack_settings, store, s3_prefix, name, first.version, "bob", "again")

    second = register(stack_settings, name, "s3://x/m2", _tags(split_uri, "s" * 64), {}, gate_passed=True)
    approve(stack_settings, store, s3_prefix, name, second.version, "bob", "ok")
    assert client.get_model_version(name, second.version).tags["amnesia.previous_champion"] == first.version
    third = register(stack_settings, name, "s3://x/m3", _tags(split_uri, "t" * 64), {}, gate_passed=True)
    reject(stack_settings, store, s3_prefix, name, third.version, "carol", "retain too low")
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, CANDIDATE)  # the rejected one held it; now nobody does
    rows = history(stack_settings, name)
    assert [(r["version"], r["status"], r["reviewer"]) for r in rows] == [
        (first.version, "approved", "alice"), (second.version, "approved", "bob"), (third.version, "rejected", "carol")
    ]  # fmt: skip
