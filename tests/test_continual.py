"""Compliance over time, on the real stack (S3, MLflow with auth, kfp.local): scheduled runs that build on the
approved model, and no approval that brings a forgotten person back.

One story, in order (each step needs the one before): month 1 is approved; month 2 starts from that champion
and is checked on month 1's people, person by person; a run from the original model with only new requests
fails the gate naming the month-1 and month-2 requests it brought back; a month-1 request is purged and
the store keeps none of its answers, yet month 3's gate still checks that person from fingerprints; a
rollback re-opens what only the versions it leaves had fulfilled, and a candidate planned under the old
champion can no longer be approved (stale base).

What it shrinks, and why it cannot change what is tested: the demo's attacks are off (they test robustness,
not history: tests/test_walkthrough.py runs them) and the three months are 6, 5 and 5 of the demo's 16
requests. Four pipeline runs, about six minutes.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, DemoConfig
from amnesia.demo.world import generate
from amnesia.governance.evidence import evidence, lines
from amnesia.governance.obligations import rollback
from amnesia.governance.purge import purge
from amnesia.governance.registry import approve, history
from amnesia.governance.versions import CHAMPION, RegistryError, alias_of
from amnesia.results.evaluation import Evaluation
from amnesia.results.gate import GateResult
from amnesia.results.plan import RunPlan
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.runtime.summary import summarize
from amnesia.science.metrics.items import _tokenizer
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.obligations import ObligationStore
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from pipelines.demo import _batches, demo_pipeline_config
from pipelines.local import run_local
from tests.test_obligations import raw_text

NAME = "continual-demo"


def _config(demo: DemoArtifacts, root: str, start: str = "auto") -> PipelineConfig:
    cfg = demo_pipeline_config(demo, root)
    evaluate = cfg.evaluate.model_copy(update={"attacks": None})
    gate = cfg.gate.model_copy(update={"quantization_recovery_ceiling": None, "relearning_recovery_ceiling": None})
    history = cfg.history.model_copy(update={"start": start})
    return cfg.model_copy(update={"name": "months", "model_name": NAME, "evaluate": evaluate, "gate": gate,
                                  "history": history})  # fmt: skip


def _run(cfg: PipelineConfig, settings: Settings, tmp: Path, label: str) -> str:
    run_id = f"{label}-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(RuntimeError):  # a failed gate ends in a failed task; the test reads what was stored
        run_local(cfg, settings, run_id, tmp / "kfp", logs=tmp / "logs" / run_id)
    return run_id


def _version(client: MlflowClient, run_id: str) -> str | None:
    found = client.search_model_versions(f"tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}'")
    return str(found[0].version) if found else None


def _plan(store: ArtifactStore, root: str, run_id: str) -> RunPlan:
    return RunPlan.model_validate(store.get_json(join(root, "runs", run_id, "preflight", "plan.json")))


def _candidate(store: ArtifactStore, client: MlflowClient, version: str) -> Evaluation:
    ref = client.get_model_version(NAME, version).tags["amnesia.candidate_evaluation"]
    return Evaluation.load(store, ref.partition("#")[0])


@pytest.mark.timeout(1800)  # four pipeline runs, and the demo base model when this is the session's first user
def test_scheduled_runs_keep_every_earlier_request_forgotten(
    stack_settings: Settings, demo_build: DemoArtifacts, people, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings, store = stack_settings, ArtifactStore(stack_settings)
    root = f"s3://{settings.bucket}/continual-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(settings.mlflow_tracking_uri)
    queue = RequestQueue(store, root)
    everyone = load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))
    first, second, third = _batches(everyone, 3)
    ids = [[r.request_id for r in b] for b in (first, second, third)]

    # Month 1: from the original (no champion yet), approved.
    queue.submit(first)
    run1 = _run(_config(demo_build, root), settings, tmp_path, "m1")
    assert _plan(store, root, run1).mode == "original"
    v1 = _version(client, run1)
    assert v1 is not None, "month 1 did not pass its gate"
    reviewer = people("continual-dpo", NAME)  # MANAGE on the model, once it exists; not the runner
    approve(settings, store, root, NAME, v1, reviewer, "month 1 read")
    obligations = ObligationStore(store, root, NAME)
    assert [o.request_id for o in obligations.list("active")] == sorted(ids[0])

    # Month 2: incremental from v1 (pinned), and checked on every month-1 person.
    queue.submit(second)
    run2 = _run(_config(demo_build, root), settings, tmp_path, "m2")
    plan2 = _plan(store, root, run2)
    assert plan2.mode == "incremental" and plan2.start_version == v1 and plan2.champion == v1
    assert plan2.start_digest == client.get_model_version(NAME, v1).tags[Tag.MODEL_DIGEST]
    assert [o.request_id for o in plan2.obligations] == sorted(ids[0]) and plan2.full_check
    v2 = _version(client, run2)
    assert v2 is not None, "month 2 did not pass its gate"
    # The run's summary names the version it made (unlearn's base tag is v1's folder, the version's is the original).
    assert f"model   {NAME} version {v2} (pending_approval)" in summarize(_config(demo_build, root), settings, run2)
    tags2 = client.get_model_version(NAME, v2).tags
    assert tags2[Tag.START_VERSION] == v1 and tags2[Tag.START_MODEL_DIGEST] == plan2.start_digest
    assert tags2[Tag.BASE_MODEL_DIGEST] == demo_build.model_digest  # the original: relative floors against it
    checked = _candidate(store, client, v2).obligations
    assert sorted(checked) == sorted(ids[0])
    assert all((c.forget_score or 0) >= 0.5 and c.items > 0 for c in checked.values()), checked  # still forgotten
    approve(settings, store, root, NAME, v2, reviewer, "month 2 read, month-1 people still forgotten")
    assert len(obligations.list("active")) == len(ids[0]) + len(ids[1])

    # The naive run (today's behaviour before obligations): the original model, the new requests only.
    queue.submit(third)
    naive = _run(_config(demo_build, root, start="original"), settings, tmp_path, "naive")
    assert _version(client, naive) is None, "a run that brings people back registered a candidate"
    verdict = GateResult.load(store, join(root, "runs", naive, "report"))
    came_back = {c.name.split(".")[1] for c in verdict.checks if c.name.startswith("obligation.") and not c.passed}
    earlier = set(ids[0]) | set(ids[1])
    # Most earlier people are back (unlearning this month's people forgets a few others by the way), by name.
    assert came_back <= earlier and len(came_back) > len(earlier) / 2 and came_back & set(ids[0]), verdict.reasons
    named = sorted(came_back & set(ids[0]))[0]
    assert any(r.startswith(f"obligation.{named}.forget_score ") and " < floor " in r for r in verdict.reasons)
    assert {r.request_id for r in queue.list("pending")} == set(ids[2])  # its requests stay pending

    # Purge a month-1 request: the store keeps none of that person's answers, nor their tokens, in the clear.
    gone = ids[0][0]
    record, _uri = purge(settings, store, root, [], [gone], by="dpo")
    assert record.runs == [run1]
    world = generate(DemoConfig().world)
    docs = set(obligations.get(gone).documents)  # type: ignore[union-attr]
    theirs = [r for r in world.forget if r.document_id in docs]
    others = " ".join(r.output.lower() for r in world.forget + world.retain if r.document_id not in docs)
    # Their own words, as the scorer tokenizes them (4+ characters, a letter in it: a digit group alone would
    # match inside the store's hex digests and uuids), as whole words; whole answers (SSNs, phones) as they are.
    tokens = {t for r in theirs for t in _tokenizer().tokenize(r.output)
              if len(t) > 3 and re.search("[a-z]", t) and not re.search(rf"(?<![a-z0-9]){t}(?![a-z0-9])", others)}
    # Left out: the request register (it keeps its subjects: README) and the models themselves, whose tokenizer
    # vocabulary was trained on the whole corpus and holds the name as a token (unlearning changes weights,
    # not a vocabulary).
    stored = raw_text(store, root, skip=("/requests/", "/unlearn/model/", "/unlearn/checkpoints/"))
    assert theirs and tokens, "the purged person has no answer of their own to look for"
    own = [r.output for r in theirs if r.output.lower() not in others]  # "Tampere" may be someone else's too
    assert own and not [a for a in own if a.lower() in stored]
    assert not [t for t in tokens if re.search(rf"(?<![a-z0-9]){t}(?![a-z0-9])", stored)]

    # Month 3, cumulative: built on v2 incrementally, this small model's held-out people fell under the demo's
    # floor here (0.588 < 0.6; bench/continual.py shows the same drift). From the original, with every request
    # so far, and the purged person is still checked, from fingerprints.
    run3 = _run(_config(demo_build, root, start="cumulative"), settings, tmp_path, "m3")
    plan3 = _plan(store, root, run3)
    assert plan3.mode == "cumulative" and plan3.champion == v2 and plan3.start_version is None
    assert gone in [o.request_id for o in plan3.obligations]
    v3 = _version(client, run3)
    assert v3 is not None, "month 3 did not pass its gate"
    checked3 = _candidate(store, client, v3).obligations
    assert checked3[gone].items == len(theirs) and (checked3[gone].forget_score or 0) >= 0.5

    # Roll back to v1: month 2's requests are pending again; v3, planned under v2, is a stale base now.
    done = rollback(settings, store, root, NAME, v1, reviewer, "month 2 broke a downstream eval")
    assert alias_of(client, NAME, CHAMPION) == v1 and sorted(done["reopened"]) == sorted(ids[1])
    assert {r.request_id for r in queue.list("pending")} == set(ids[1]) | set(ids[2])
    assert {o.request_id for o in obligations.list("reopened")} == set(ids[1])
    with pytest.raises(RegistryError, match=f"stale base: it was planned when the champion was v{v2}"):
        approve(settings, store, root, NAME, v3, reviewer, "too late")
    rows = history(settings, NAME)
    assert [(r["status"], r["version"]) for r in rows][-1] == ("rollback", v1)

    # Evidence over time: the month-1 person, version by version since fulfilment; a month-2 one re-opened.
    found = evidence(settings, store, root, gone)
    ob = found.obligations[0]
    assert ob.fulfilled_by == v1 and [(r.version, r.still_forgotten) for r in ob.versions] == [(v2, True)]
    text = "\n".join(lines(found))
    assert f"v{v2}" in text and "still forgotten" in text and "membership test: not re-run" in text
    assert "purged" in text
    reopened = evidence(settings, store, root, ids[1][0])
    assert reopened.state == "pending" and reopened.obligations[0].state == "reopened"
    assert "re-opened" in "\n".join(lines(reopened))

    # A champion whose chain no longer verifies is refused where a run would start from it.
    from amnesia.runtime.plan import PlanError, make_plan
    from amnesia.storage.context import RunContext

    folder = client.get_model_version(NAME, v1).source
    store.put_bytes(store.get_bytes(join(folder, "config.json")) + b" ", join(folder, "config.json"))
    ctx = RunContext.create("m4-plan", root, settings)
    with pytest.raises(PlanError, match=f"start: {NAME} version {v1} \\(champion\\) does not re-verify at "):
        make_plan(ctx, _config(demo_build, root).model, NAME, _config(demo_build, root).history)
