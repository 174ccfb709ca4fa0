"""`amnesia demo` (what `make demo` runs) against the session stack, and what it leaves in MLflow."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from amnesia.demo.prepare import DemoArtifacts, DemoConfig
from amnesia.demo.walkthrough import run_demo
from amnesia.demo.world import generate
from amnesia.lineage import Tag
from amnesia.settings import Settings


def test_demo_walkthrough_records_digests_and_no_forget_text(
    stack_settings: Settings, demo_build: DemoArtifacts
) -> None:
    lines: list[str] = []
    result = run_demo(stack_settings, keep_stack=True, echo=lines.append)
    assert result["demo"]["model_digest"] == demo_build.model_digest and result["demo"]["reused"] is True
    assert any(line.startswith("store   verified") for line in lines)

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags[Tag.STATUS] == "succeeded"
    (stage,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert stage.data.params["base_model_digest"] == demo_build.model_digest
    assert stage.data.metrics["base_forget_qa_em"] >= 0.95

    world = generate(DemoConfig().world)
    secrets = {r.output for r in world.forget if r.kind == "qa"} | {q["subject"] for q in world.requests}
    logged = json.dumps([parent.data.to_dictionary(), stage.data.to_dictionary()]) + "\n".join(lines)
    assert not [s for s in secrets if s.lower() in logged.lower()]
