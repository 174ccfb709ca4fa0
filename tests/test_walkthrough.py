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
    stages = {
        r.data.tags[Tag.STAGE]: r
        for r in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    }
    assert set(stages) == {"prepare", "split", "trace", "unlearn", "evaluate-base", "evaluate-candidate", "gate"}
    assert stages["gate"].data.tags[Tag.GATE_PASSED] == str(result["gate"]["passed"]).lower()
    assert result["gate"]["passed"] and result["candidate"]["forget"]["Task2"]["knowledge"] <= 0.10
    assert stages["unlearn"].data.tags[Tag.MODEL_DIGEST] == result["unlearn"]["digest"]
    assert stages["unlearn"].data.tags[Tag.LAYERS] == stages["trace"].data.tags[Tag.LAYERS]
    assert result["unlearn"]["after"]["forget_exact"] <= 0.05 < result["unlearn"]["before"]["forget_exact"]
    assert stages["trace"].data.tags[Tag.LAYERS] == ",".join(map(str, result["trace"]["layers"]))
    assert stages["prepare"].data.params["base_model_digest"] == demo_build.model_digest
    assert stages["prepare"].data.metrics["base_forget_qa_em"] >= 0.95
    assert stages["split"].data.tags[Tag.SPLIT_DIGEST] == result["split"]["digest"]
    assert result["split"]["sets"]["forget_train"]["documents"] == 16  # one request per forget person

    world = generate(DemoConfig().world)
    secrets = {r.output for r in world.forget if r.kind == "qa"} | {q["subject"] for q in world.requests}
    runs = [parent, *(client.get_run(r.info.run_id) for r in stages.values())]
    logged = json.dumps([r.data.to_dictionary() for r in runs]) + "\n".join(lines)
    logged += json.dumps([[d.dataset.source, d.dataset.profile] for r in runs for d in r.inputs.dataset_inputs])
    assert not [s for s in secrets if s.lower() in logged.lower()]


def test_amnesia_demo_needs_no_environment_beyond_its_home(stack_state, demo_build: DemoArtifacts) -> None:  # type: ignore[no-untyped-def]
    """What `make demo` runs: the CLI, with no S3 or MLflow variables set; it must find the stack from
    its home folder and pass that stack's store to every stage (a default store would have no keys)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    env["AMNESIA_HOME"] = stack_state.home
    out = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", "demo"], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reused demo" in out.stdout and "trace   " in out.stdout and "mlflow  run" in out.stdout
    assert "unlearn candidate model: s3://" in out.stdout and "gate    PASS" in out.stdout
    assert "eval    base reused from s3://" in out.stdout  # the first demo run scored it; this one reuses it
