"""Registration (idempotent), approval by another person, rejection and history, against the real
MLflow server of the session stack."""

from __future__ import annotations

import json
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from amnesia.core.settings import Settings
from amnesia.governance.identity import AuthError
from amnesia.governance.registry import approve, history, pending, register, reject
from amnesia.governance.versions import CANDIDATE, CHAMPION, NOTE_SHA256, NOTE_URI, RegistryError, figures
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import RequestQueue, canonical_jsonl
from amnesia.storage.uri import join
from tests.chains import People, _chain, _folder, _requests


def test_register_approve_reject_history(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, people: People
) -> None:
    name = f"amnesia-test-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    alice, bob, carol = (people(who, name) for who in ("alice", "bob", "carol"))
    runner = people("amnesia-runner", name)  # the pipeline's MLflow user: it made the versions
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
    assert mv.tags["amnesia.runner"] == "amnesia-runner" and not [k for k in mv.tags if "metric" in k]
    assert figures(client, mv) == {"final": 0.8}  # figures are the LoggedModel's metrics, not tags
    assert client.get_logged_model(mv.tags["amnesia.logged_model"]).params[Tag.CODE_VERSION]

    waiting = pending(stack_settings, name)
    assert [(r["version"], r["gate"], r["runner"]) for r in waiting] == [(first.version, "passed", "amnesia-runner")]
    assert waiting[0]["figures"] == {} and waiting[0]["age_s"] < 600  # this version logged no figures
    with pytest.raises(AuthError, match="amnesia-runner ran the pipeline"):  # MANAGE on the model, still refused
        approve(stack_settings, store, s3_prefix, name, first.version, runner, "looks fine")
    dave = people("dave")  # signed in, but the server's default (READ) on this model
    with pytest.raises(AuthError, match=f"dave has READ on registered model {name}; deciding needs MANAGE"):
        approve(stack_settings, store, s3_prefix, name, first.version, dave, "looks fine")
    frank = people("frank", name, "EDIT")  # may edit, not delete: alias `candidate` could not come off
    with pytest.raises(AuthError, match=f"frank has EDIT on registered model {name}; deciding needs MANAGE"):
        reject(stack_settings, store, s3_prefix, name, first.version, frank, "looks fine")
    with pytest.raises(RegistryError, match="needs a note"):
        approve(stack_settings, store, s3_prefix, name, first.version, alice, "  ")
    assert client.get_model_version(name, first.version).tags[Tag.STATUS] == "pending_approval"
    tags = approve(stack_settings, store, s3_prefix, name, first.version, alice, "checked the report for Person a 0")
    assert client.get_model_version_by_alias(name, CHAMPION).version == first.version
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, CANDIDATE)  # approved: no longer a candidate
    assert tags["amnesia.previous_champion"] == "none"
    note = store.get_json(tags[NOTE_URI])
    assert note["reviewer"] == "alice" and note["note"].endswith("Person a 0")  # the note is in S3 ...
    assert note["authenticated_by"] == "mlflow" and tags["amnesia.approver_auth"] == "mlflow"
    got = client.get_model_version(name, first.version).tags
    assert got[NOTE_SHA256] == tags[NOTE_SHA256] and "Person a 0" not in str(got)  # ... and not in MLflow
    assert [r.request_id for r in queue.list("fulfilled")] == ["req-a-0", "req-a-1"] and queue.list("pending") == []
    with pytest.raises(RegistryError, match="is approved, not pending"):
        approve(stack_settings, store, s3_prefix, name, first.version, bob, "again")

    second = register(stack_settings, name, *_chain(store, join(s3_prefix, "runs", "r2"), _requests(1, "s")), {}, True)
    approve(stack_settings, store, s3_prefix, name, second.version, bob, "ok")
    assert client.get_model_version(name, second.version).tags["amnesia.previous_champion"] == first.version
    third = register(stack_settings, name, *_chain(store, join(s3_prefix, "runs", "r3"), _requests(1, "t")), {}, True)
    reject(stack_settings, store, s3_prefix, name, third.version, carol, "retain too low")
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
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, people: People
) -> None:
    name = f"amnesia-test-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    alice = people("alice", name)
    # A failed gate, its tag edited to true in MLflow: the stored verdict says otherwise.
    source, tags = _chain(store, join(s3_prefix, "runs", "f"), _requests(1, "f"), passed=False)
    failed = register(stack_settings, name, source, tags | {Tag.GATE_PASSED: "true"}, {}, gate_passed=True)
    with pytest.raises(RegistryError, match=r"chain does not verify at 'gate'"):
        approve(stack_settings, store, s3_prefix, name, failed.version, alice, "the tag says passed")
    # Tags made to agree with the lie still meet the stored verdict: refused as a failed gate.
    client.set_model_version_tag(name, failed.version, Tag.GATE_PASSED, "false")
    with pytest.raises(RegistryError, match="did not pass its gate \\(stored verdict\\)"):
        approve(stack_settings, store, s3_prefix, name, failed.version, alice, "trying again")
    # A passed chain whose candidate bytes changed after the fact: refused, naming the step.
    source, tags = _chain(store, join(s3_prefix, "runs", "p"), _requests(1, "p"))
    passed = register(stack_settings, name, source, tags, {}, gate_passed=True)
    store.put_bytes(b"{}", join(source, "amnesia_unlearn.json"))
    with pytest.raises(RegistryError, match=r"at 'candidate' \(.*differs from the manifest"):
        approve(stack_settings, store, s3_prefix, name, passed.version, alice, "looks fine")
    assert client.get_model_version(name, passed.version).tags[Tag.STATUS] == "pending_approval"


def test_purge_waits_for_the_decision_then_retention_purges_and_the_audit_shows_it(
    stack_settings: Settings, store: ArtifactStore, s3_prefix: str, people: People
) -> None:
    from amnesia.governance.audit import audit
    from amnesia.governance.purge import RETENTION, PurgeError, apply_retention, due_for_retention, plan, purge

    name, run_id = f"amnesia-purge-{uuid.uuid4().hex[:6]}", f"purge-{uuid.uuid4().hex[:6]}"
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

    approve(stack_settings, store, s3_prefix, name, version, people("alice", name), "read it")
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
