"""Lineage in the real MLflow server: nested runs across processes, and the record-text guard."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from amnesia.core.errors import LineageError
from amnesia.core.settings import Settings
from amnesia.storage.lineage import Guard, Lineage, Tag

FORGET_TEXT = "Jane Quill was born on 4 May 1981 in Dunmore"
FORGET_EMAIL = "jane.quill@example.org"


def _lineage(settings: Settings, **kw: object) -> Lineage:
    return Lineage(f"pr-{uuid.uuid4().hex[:10]}", experiment="lineage-tests", settings=settings, **kw)  # type: ignore[arg-type]


def test_stage_runs_nest_under_one_parent_across_processes(stack_settings: Settings) -> None:
    lin = _lineage(stack_settings)
    with lin.stage("split", params={"seed": 3}) as run:
        run.log_metrics({"forget_records": 12})
        run.set_tags({Tag.CONFIG_HASH: "ab" * 32})
    child = f"""
from amnesia.storage.lineage import Lineage
from amnesia.core.settings import load_settings
lin = Lineage({lin.pipeline_run_id!r}, experiment="lineage-tests", settings=load_settings())
with lin.stage("trace") as run:
    run.log_metrics({{"facts": 7}})
print(lin.parent_run_id())
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == lin.parent_run_id(), "the second process joined another parent"

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    runs = client.search_runs([lin.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = '{lin.pipeline_run_id}'")
    by_stage = {r.data.tags.get(Tag.STAGE): r for r in runs if r.data.tags.get(Tag.ROLE) == "stage"}
    assert set(by_stage) == {"split", "trace"}
    for r in by_stage.values():
        assert r.data.tags["mlflow.parentRunId"] == lin.parent_run_id()
        assert r.info.status == "FINISHED"
        assert r.data.tags[Tag.CODE_VERSION] and r.data.tags[Tag.IMAGE].endswith(":0.1.0")
    assert by_stage["split"].data.params == {"seed": "3"}
    assert by_stage["trace"].data.metrics == {"facts": 7.0}

    lin.close("succeeded", **{Tag.STOPPED_AT: "register"})
    parent = client.get_run(lin.parent_run_id())
    assert parent.info.status == "FINISHED" and parent.data.tags[Tag.STATUS] == "succeeded"


def test_failed_stage_is_marked_without_its_message(stack_settings: Settings) -> None:
    lin = _lineage(stack_settings)
    with pytest.raises(ValueError), lin.stage("unlearn"):
        raise ValueError(f"bad record: {FORGET_TEXT}")
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    (run,) = [
        r
        for r in client.search_runs([lin.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = '{lin.pipeline_run_id}'")
        if r.data.tags.get(Tag.STAGE)
    ]
    assert run.info.status == "FAILED" and run.data.tags[Tag.ERROR] == "ValueError"
    assert "Jane" not in json.dumps(run.data.tags)


@pytest.mark.parametrize("value", [FORGET_TEXT, "x" * 501, "two words"])
def test_free_text_is_refused_and_not_echoed(stack_settings: Settings, value: str) -> None:
    lin = _lineage(stack_settings)
    with lin.stage("split") as run:
        for log in (lambda: run.log_params({"note": value}), lambda: run.set_tags({"amnesia.note": value})):
            with pytest.raises(LineageError) as info:
                log()
            assert value not in str(info.value) and "free text" in str(info.value)


def test_protected_strings_are_refused_even_when_they_look_like_ids(stack_settings: Settings, tmp_path: Path) -> None:
    lin = _lineage(stack_settings, protected=[FORGET_EMAIL, "Jane Quill", "no"])
    with lin.stage("evaluate") as run:
        with pytest.raises(LineageError, match="protected record text"):
            run.set_tags({"amnesia.contact": FORGET_EMAIL.upper()})
        run.set_tags({"amnesia.answer": "no"})  # too short to protect: would match everywhere
        report = tmp_path / "generations.jsonl"
        report.write_text(json.dumps({"id": "doc1qa0", "generation": "jane   QUILL lives here"}))
        with pytest.raises(LineageError, match="generations.jsonl"):
            run.log_artifact(report)
        safe = tmp_path / "scores.json"
        safe.write_text(json.dumps({"doc1qa0": 0.0}))
        run.log_artifact(safe)
        with pytest.raises(LineageError, match="not a number"):
            run.log_metrics({"score": "high"})  # type: ignore[dict-item]


def test_dataset_input_has_digest_and_source_but_no_content(stack_settings: Settings) -> None:
    lin = _lineage(stack_settings)
    digest = "c0ffee" * 10 + "abcd"
    with lin.stage("split") as run:
        run.log_dataset(
            "forget_train",
            digest,
            "s3://amnesia/runs/x/forget_train.parquet",
            "forget_train",
            {"records": 40, "documents": 10},
        )
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    (stage,) = [
        r
        for r in client.search_runs([lin.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = '{lin.pipeline_run_id}'")
        if r.data.tags.get(Tag.STAGE)
    ]
    (ds_input,) = client.get_run(stage.info.run_id).inputs.dataset_inputs
    ds = ds_input.dataset
    assert ds.name == "forget_train" and ds.digest == digest[:36]
    assert json.loads(ds.source) == {"uri": "s3://amnesia/runs/x/forget_train.parquet", "sha256": digest}
    assert json.loads(ds.profile) == {"documents": 10, "records": 40}
    assert ds.schema in (None, "")
    assert {t.key: t.value for t in ds_input.tags}["mlflow.data.context"] == "forget_train"


def test_guard_normalises_case_and_whitespace() -> None:
    g = Guard(["Jane  Quill"])
    assert g.leaks("so JANE quill said") and not g.leaks("Jane Q.")


def test_lineage_needs_a_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from amnesia.core.settings import load_settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(LineageError, match="MLFLOW_TRACKING_URI"):
        Lineage("pr-1", settings=load_settings())


def test_live_series_reaches_mlflow_while_the_stage_runs(stack_settings: Settings) -> None:
    """Batched: nothing is sent before `every_s` has passed; then every numeric key, at its step."""
    from amnesia.storage.lineage import LiveSeries

    lin = _lineage(stack_settings)
    with lin.stage("unlearn") as run:
        held = LiveSeries(run, every_s=3600)
        held.add({"step": 1.0, "forget_loss": -1.5, "m": 6.0})
        assert lin.client.get_metric_history(run.run_id, "forget_loss") == []
        held.flush()
        live = LiveSeries(run, every_s=0)
        live.add({"step": 2.0, "forget_loss": -2.5, "m": 6.5, "new_key_a_method_reports": 0.25})
        live.add({"step": 1.0, "eval_loss": 0.5}, prefix="eval_")
        history = {m.step: m.value for m in lin.client.get_metric_history(run.run_id, "forget_loss")}
        assert history == {1: -1.5, 2: -2.5}  # visible before the stage run ends
        assert lin.client.get_metric_history(run.run_id, "new_key_a_method_reports")[0].value == 0.25
        assert lin.client.get_metric_history(run.run_id, "eval_eval_loss")[0].step == 1


def test_a_retried_stage_is_judged_by_its_last_attempt(stack_settings: Settings) -> None:
    """A compute stage that failed once and then succeeded on retry does not mark the run as stopped."""
    from amnesia.storage.lineage import PIPELINE_STAGES, finish_run

    lin = Lineage(f"pr-{uuid.uuid4().hex[:10]}", settings=stack_settings)  # finish_run's experiment
    for stage in PIPELINE_STAGES:
        if stage == "unlearn":
            with pytest.raises(RuntimeError), lin.stage(stage):
                raise RuntimeError("transient")
        with lin.stage(stage):
            pass
    assert finish_run(lin.pipeline_run_id, None, "SUCCEEDED", stack_settings) == "succeeded"
    parent = lin.client.get_run(lin.parent_run_id())
    assert parent.data.tags[Tag.STOPPED_AT] == "end"


def test_a_killed_attempt_does_not_stay_running(stack_settings: Settings) -> None:
    """kill -9 inside a stage leaves its run RUNNING (nothing could close it); the next attempt ends it."""
    lin = _lineage(stack_settings)
    child = f"""
import os, signal
from amnesia.storage.lineage import Lineage
from amnesia.core.settings import load_settings
lin = Lineage({lin.pipeline_run_id!r}, experiment="lineage-tests", settings=load_settings())
with lin.stage("unlearn") as run:
    run.log_metrics({{"step": 3}})
    os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    query = f"tags.`{Tag.PIPELINE_RUN_ID}` = '{lin.pipeline_run_id}' and tags.`{Tag.STAGE}` = 'unlearn'"
    (killed,) = client.search_runs([lin.experiment_id], query)
    assert killed.info.status == "RUNNING"  # what a killed attempt leaves
    with lin.stage("unlearn") as run:
        run.log_metrics({"step": 4})
    runs = {r.info.run_id: r for r in client.search_runs([lin.experiment_id], query)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert runs[killed.info.run_id].data.tags[Tag.ERROR] == "KilledAttempt"
    assert [r.info.status for i, r in runs.items() if i != killed.info.run_id] == ["FINISHED"]
