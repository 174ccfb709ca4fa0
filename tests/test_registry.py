"""Registration (idempotent), approval by another person, rejection and history, against the real
MLflow server of the session stack."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from amnesia.lineage import Tag
from amnesia.registry import (
    BASE_EVALUATION,
    CANDIDATE,
    CANDIDATE_EVALUATION,
    CHAMPION,
    NOTE_SHA256,
    NOTE_URI,
    REPORT_DIGEST,
    RegistryError,
    approve,
    figures,
    history,
    pending,
    register,
    reject,
)
from amnesia.requests import ErasureRequest, RequestQueue, canonical_jsonl, request_digest
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


def _folder(store: ArtifactStore, uri: str, files: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return store.put_dir(Path(tmp), uri).digest


def _chain(store: ArtifactStore, root: str, reqs: list[ErasureRequest], passed: bool = True) -> tuple[str, dict]:
    """A stored chain as the stages leave it (folders with manifests, the files the audit reads) and the
    version tags that record it: what approval re-verifies before it trusts anything."""
    split, base, trace = join(root, "split"), join(root, "base"), join(root, "trace")
    model, evals, gate = join(root, "model"), join(root, "eval"), join(root, "gate")
    scores = {"task_aggregate": 0.1, "mia_score": 0.9, "mmlu": 0.5, "final": 0.5}
    summary = {"method": "sha256", "config_hash": "c" * 64, "layers": [0, 1], "steps": 5, "stopped": "epochs"}
    verdict = {"passed": passed, "codes": [] if passed else ["mmlu_below_floor"]}
    tags = {
        Tag.REQUEST_DIGEST: request_digest(reqs),
        Tag.SPLIT_URI: split,
        Tag.SPLIT_DIGEST: _folder(store, split, {"requests.jsonl": canonical_jsonl(reqs)}),
        Tag.BASE_MODEL_URI: base,
        Tag.BASE_MODEL_DIGEST: _folder(store, base, {"config.json": {}}),
        Tag.TRACE_URI: trace,
        Tag.TRACE_DIGEST: _folder(store, trace, {"aggregate.json": {"layers": [0, 1]}}),
        Tag.LAYERS: "0,1",
        Tag.MODEL_DIGEST: _folder(store, model, {"amnesia_unlearn.json": summary | {"trainable_params": 10}}),
        Tag.CONFIG_HASH: "c" * 64,
        Tag.METHOD: "sha256",
        BASE_EVALUATION: f"{evals}/base#{_folder(store, f'{evals}/base', {'result.json': scores})}",
        CANDIDATE_EVALUATION: f"{evals}/cand#{_folder(store, f'{evals}/cand', {'result.json': scores})}",
        Tag.REPORT_URI: gate,
        REPORT_DIGEST: _folder(store, gate, {"verdict.json": verdict}),
        Tag.GATE_PASSED: str(passed).lower(),
    }
    return model, tags


def test_register_approve_reject_history(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"amnesia-test-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    monkeypatch.setenv("AMNESIA_RUNNER", "pipeline-bot")
    queue = RequestQueue(store, s3_prefix)
    reqs = _requests(2, "a")
    queue.submit(reqs)
    m1, tags1 = _chain(store, join(s3_prefix, "runs", "r1"), reqs)

    with pytest.raises(RegistryError, match="did not pass its gate"):
        register(stack_settings, name, m1, tags1, {}, gate_passed=False)
    first = register(stack_settings, name, m1, tags1, {"final": 0.8}, gate_passed=True)
    again = register(stack_settings, name, m1, tags1, {"final": 0.8}, gate_passed=True)
    assert first.created and not again.created and again.version == first.version
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    mv = client.get_model_version_by_alias(name, CANDIDATE)
    assert mv.version == first.version and mv.tags[Tag.STATUS] == "pending_approval"
    assert mv.tags["amnesia.runner"] == "pipeline-bot" and not [k for k in mv.tags if "metric" in k]
    assert figures(client, mv) == {"final": 0.8}  # figures are the LoggedModel's metrics, not tags
    assert client.get_logged_model(mv.tags["amnesia.logged_model"]).params[Tag.CODE_VERSION]

    waiting = pending(stack_settings, name)
    assert [(r["version"], r["gate"], r["runner"]) for r in waiting] == [(first.version, "passed", "pipeline-bot")]
    assert waiting[0]["figures"] == {} and waiting[0]["age_s"] < 600  # this version logged no figures
    for same in ("pipeline-bot", " Pipeline-Bot "):  # case and spaces do not make another person
        with pytest.raises(RegistryError, match="ran the pipeline"):
            approve(stack_settings, store, s3_prefix, name, first.version, same, "looks fine")
    with pytest.raises(RegistryError, match="needs a note"):
        approve(stack_settings, store, s3_prefix, name, first.version, "alice", "  ")
    tags = approve(stack_settings, store, s3_prefix, name, first.version, "alice", "checked the report for Person a 0")
    assert client.get_model_version_by_alias(name, CHAMPION).version == first.version
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, CANDIDATE)  # approved: no longer a candidate
    assert tags["amnesia.previous_champion"] == "none"
    note = store.get_json(tags[NOTE_URI])
    assert note["reviewer"] == "alice" and note["note"].endswith("Person a 0")  # the note is in S3 ...
    got = client.get_model_version(name, first.version).tags
    assert got[NOTE_SHA256] == tags[NOTE_SHA256] and "Person a 0" not in str(got)  # ... and not in MLflow
    assert [r.request_id for r in queue.list("fulfilled")] == ["req-a-0", "req-a-1"] and queue.list("pending") == []
    with pytest.raises(RegistryError, match="is approved, not pending"):
        approve(stack_settings, store, s3_prefix, name, first.version, "bob", "again")

    second = register(stack_settings, name, *_chain(store, join(s3_prefix, "runs", "r2"), _requests(1, "s")), {}, True)
    approve(stack_settings, store, s3_prefix, name, second.version, "bob", "ok")
    assert client.get_model_version(name, second.version).tags["amnesia.previous_champion"] == first.version
    third = register(stack_settings, name, *_chain(store, join(s3_prefix, "runs", "r3"), _requests(1, "t")), {}, True)
    reject(stack_settings, store, s3_prefix, name, third.version, "carol", "retain too low")
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, CANDIDATE)  # the rejected one held it; now nobody does
    assert pending(stack_settings, name) == []
    with pytest.raises(RegistryError, match="no registered model named 'no-such-model'"):
        history(stack_settings, "no-such-model")
    rows = history(stack_settings, name)
    assert [(r["version"], r["status"], r["reviewer"]) for r in rows] == [
        (first.version, "approved", "alice"), (second.version, "approved", "bob"), (third.version, "rejected", "carol")
    ]  # fmt: skip


def test_approval_trusts_the_stored_chain_not_the_tags(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"amnesia-test-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    monkeypatch.setenv("AMNESIA_RUNNER", "pipeline-bot")
    # A failed gate, its tag edited to true in MLflow: the stored verdict says otherwise.
    source, tags = _chain(store, join(s3_prefix, "runs", "f"), _requests(1, "f"), passed=False)
    failed = register(stack_settings, name, source, tags | {Tag.GATE_PASSED: "true"}, {}, gate_passed=True)
    with pytest.raises(RegistryError, match=r"chain does not verify at 'gate'"):
        approve(stack_settings, store, s3_prefix, name, failed.version, "alice", "the tag says passed")
    # Tags made to agree with the lie still meet the stored verdict: refused as a failed gate.
    client.set_model_version_tag(name, failed.version, Tag.GATE_PASSED, "false")
    with pytest.raises(RegistryError, match="did not pass its gate \\(stored verdict\\)"):
        approve(stack_settings, store, s3_prefix, name, failed.version, "alice", "trying again")
    # A passed chain whose candidate bytes changed after the fact: refused, naming the step.
    source, tags = _chain(store, join(s3_prefix, "runs", "p"), _requests(1, "p"))
    passed = register(stack_settings, name, source, tags, {}, gate_passed=True)
    store.put_bytes(b"{}", join(source, "amnesia_unlearn.json"))
    with pytest.raises(RegistryError, match=r"at 'candidate' \(.*differs from the manifest"):
        approve(stack_settings, store, s3_prefix, name, passed.version, "alice", "looks fine")
    assert client.get_model_version(name, passed.version).tags[Tag.STATUS] == "pending_approval"


def test_purge_waits_for_the_decision_then_retention_purges_and_the_audit_shows_it(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amnesia.audit import audit
    from amnesia.purge import RETENTION, PurgeError, apply_retention, due_for_retention, plan, purge

    name, run_id = f"amnesia-purge-{uuid.uuid4().hex[:6]}", f"purge-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AMNESIA_RUNNER", "pipeline-bot")
    reqs = _requests(1, run_id)
    RequestQueue(store, s3_prefix).submit(reqs)
    model, tags = _chain(store, join(s3_prefix, "runs", run_id), reqs)
    version = register(stack_settings, name, model, tags | {Tag.PIPELINE_RUN_ID: run_id}, {}, gate_passed=True).version
    snapshot = join(s3_prefix, "runs", run_id, "split", "requests.jsonl")

    with pytest.raises(PurgeError, match=rf"run {run_id}: {name} version {version} is pending_approval; decide it"):
        purge(stack_settings, store, s3_prefix, [run_id])
    with pytest.raises(PurgeError, match="run nope: nothing stored under"):
        plan(stack_settings, store, s3_prefix, ["nope"])
    with pytest.raises(PurgeError, match="request req-x: no run worked on it"):
        plan(stack_settings, store, s3_prefix, [], ["req-x"])
    assert store.exists(snapshot)

    approve(stack_settings, store, s3_prefix, name, version, "alice", "read it")
    assert run_id not in due_for_retention(stack_settings, store, s3_prefix, days=1)  # decided seconds ago
    done = apply_retention(stack_settings, store, s3_prefix, days=0)
    assert len(done) == 1 and not store.exists(snapshot)
    record = json.loads(store.get_bytes(join(s3_prefix, "purges", f"{done[0]}.json")))
    assert record["by"] == RETENTION and record["why"] == "retention" and record["runs"] == [run_id]
    assert [f["uri"] for f in record["files"]] == [snapshot] and record["versions"] == [f"{name}/{version}"]
    assert apply_retention(stack_settings, store, s3_prefix, days=0) == []  # purged once

    checked = audit(stack_settings, store, name, version)
    links = {link.step: link for link in checked.links}
    assert checked.ok and links["purge"].detail["by"] == RETENTION and links["requests"].ok
    assert links["data"].detail["purged"] == ["requests.jsonl"] and "purged on" in links["data"].what

    # A run whose gate failed registered nothing: its data may go at once; one that passed may not.
    other = join(s3_prefix, "runs", f"{run_id}-b")
    _folder(store, join(other, "report"), {"verdict.json": {"passed": False, "codes": ["x"]}})
    _folder(store, join(other, "split"), {"requests.jsonl": canonical_jsonl(reqs)})
    orphan = join(other, "trace", "heatmaps", "fact0_mlp.png")  # an upload that never wrote its manifest
    store.put_bytes(b"a heatmap of someone's prompt", orphan)
    assert [f.uri for f in plan(stack_settings, store, s3_prefix, [f"{run_id}-b"]).files] == [
        join(other, "split", "requests.jsonl"), orphan
    ]  # fmt: skip
    _folder(store, join(other, "report"), {"verdict.json": {"passed": True, "codes": []}})
    with pytest.raises(PurgeError, match="passed its gate but registered no model version"):
        plan(stack_settings, store, s3_prefix, [f"{run_id}-b"])
