"""`amnesia demo` (what `make demo` runs): the whole pipeline in kfp.local against the session stack,
what it leaves in MLflow (and what it must not), then the issue's story: a second demo makes no second
version, a person approves, the auditor's chain verifies, and a third demo finds nothing pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, DemoConfig
from amnesia.demo.world import generate
from amnesia.storage.lineage import Tag
from pipelines.demo import MODEL_NAME, run_demo

# The demo's figures by CPU vendor (/proc/cpuinfo's vendor_id), measured with the per-document stop rule.
DEMO_FIGURES = {
    "GenuineIntel": {"forget_score": 0.711, "retain_score": 0.987, "held_out_retain_score": 0.721, "mmlu": 0.92,
                     "mia_score": 0.773},
}  # fmt: skip


def cpu_vendor() -> str:
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")


def test_demo_runs_the_pipeline_and_logs_no_forget_text(
    stack_settings: Settings, demo_build: DemoArtifacts, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    result = run_demo(stack_settings, keep_stack=True, echo=lines.append)
    text = "\n".join(lines)
    # Quiet: a line per stage as it starts and ends, the stages' progress; the rest in per-task logs.
    shown = capsys.readouterr().out.splitlines()
    # 65 before the per-person extraction test; +2: its progress line in each of the two evaluations
    assert len(shown) + len(lines) <= 67, "\n".join(shown + lines)
    for task in ("preflight", "split", "trace", "unlearn", "evaluate", "gate", "register"):
        assert any(line.startswith(f"stage   {task} ") and " succeeded in " in line for line in shown), shown
    assert any(line.strip().startswith("unlearning: step ") for line in shown), shown  # it stops early
    logs = Path(stack_settings.home) / "kfp-local" / str(result["run_id"]) / "logs"
    assert f"logs    {logs}" in text and "executorOutput" not in "\n".join(shown)
    assert (logs / "unlearn.log").read_text().count("\n") > 10  # the task's whole output is kept there
    report = next(line.strip() for line in lines if line.strip().endswith("/report.html") and "s3://" not in line)
    assert "Gate: PASS" in Path(report).read_text()  # the report, as a local file a browser opens
    assert any(line.strip().startswith("forget_score ") and " >= floor " in line for line in lines), text
    assert result["demo"]["model_digest"] == demo_build.model_digest and result["demo"]["reused"] is True  # type: ignore[index]
    assert "store   verified" in text and "status  succeeded (stopped at: end)" in text and "gate    PASS" in text, text
    assert f"model   {MODEL_NAME} version 1 (pending_approval)" in text and "report  s3://" in text
    assert f"review  {result['review_url']}  sign in as reviewer (password " in text  # the page, and who may decide

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    parent = client.search_runs(
        [client.get_experiment_by_name(stack_settings.experiment).experiment_id],
        f"tags.`{Tag.PIPELINE_RUN_ID}` = '{result['run_id']}' and tags.`{Tag.ROLE}` = 'pipeline'",
    )[0]
    assert parent.data.tags[Tag.STATUS] == "succeeded" and parent.data.tags[Tag.GATE_PASSED] == "true"
    stages = {
        r.data.tags[Tag.STAGE]: r
        for r in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    }
    assert set(stages) == {"split", "trace", "unlearn", "evaluate-base", "evaluate-candidate", "gate"}
    assert stages["unlearn"].data.tags[Tag.LAYERS] == stages["trace"].data.tags[Tag.LAYERS]
    # What a machine of a measured CPU vendor gets, to the third decimal (the README quotes them): the same
    # inputs give the same candidate there (pinned kernels and threads), so a figure that moves is a
    # reproducibility bug. Per vendor: MKL honours its AVX2 pin on Intel CPUs only, and the base model itself
    # is trained on the CPU (README, "Same inputs, same verdict"). A vendor not measured yet: the gate only.
    m = stages["gate"].data.metrics
    assert m["base.forget_score"] <= 0.05 and m["base.retain_score"] >= 0.95 and m["base.mia_score"] <= 0.1, m
    demo = DEMO_FIGURES.get(cpu_vendor())
    if demo is not None:
        assert {k: round(m[k], 3) for k in demo} == demo, m
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.tags[Tag.MODEL_DIGEST] == stages["unlearn"].data.tags[Tag.MODEL_DIGEST]

    world = generate(DemoConfig().world)
    secrets = {r.output for r in world.forget if r.kind == "qa"} | {q["subject"] for q in world.requests}
    runs = [parent, *(client.get_run(r.info.run_id) for r in stages.values())]
    logged = json.dumps([r.data.to_dictionary() for r in runs] + [version.tags]) + text
    logged += json.dumps([[d.dataset.source, d.dataset.profile] for r in runs for d in r.inputs.dataset_inputs])
    assert not [s for s in secrets if s.lower() in logged.lower()]


def test_demo_again_then_approve_audit_and_nothing_left(stack_state, demo_build: DemoArtifacts) -> None:  # type: ignore[no-untyped-def]
    """The CLI with no S3 or MLflow variables: it finds the stack from its home folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AMNESIA_"))}
    env["AMNESIA_HOME"] = str(stack_state.home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "amnesia.cli", *args], env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip

    # The store keeps its data: stop the stack, start it again (same ports, so the rest of the session's
    # clients still reach it), and the demo reuses the stored base model and finds its version.
    assert "mlflow, s3, audit" in cli("stack", "down").stdout
    ports = {"AMNESIA_S3_PORT": str(stack_state.s3.port), "AMNESIA_MLFLOW_PORT": str(stack_state.mlflow.port),
             "AMNESIA_REVIEW_PORT": str(stack_state.review.port)}  # fmt: skip
    restarted = subprocess.run([sys.executable, "-m", "amnesia.cli", "stack", "up", "--owner-pid", str(os.getpid())],
                               env=env | ports, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert restarted.returncode == 0 and stack_state.s3_endpoint in restarted.stdout, restarted.stderr
    again = cli("demo")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused demo" in again.stdout and "gate    PASS" in again.stdout
    assert "built demo" not in again.stdout and "\ntrain   " not in again.stdout  # no base-model rebuild
    # Nothing re-runs: the same requests on the same base model made version 1, and that run is summarised.
    assert f"not run again: these 16 requests on this base model made {MODEL_NAME} version 1 (run demo-" in again.stdout
    assert f"model   {MODEL_NAME} version 1 (pending_approval)" in again.stdout and "stage   " not in again.stdout
    waiting = cli("pending", MODEL_NAME).stdout  # the reviewer's queue: the version, its gate and figures
    assert f"{MODEL_NAME} v1    gate passed" in waiting and "forget_score " in waiting and "mmlu " in waiting, waiting
    refused = cli("approve", MODEL_NAME, "1", "--note", "mine")  # the stack's default identity: the runner
    assert refused.returncode != 0 and "amnesia-runner ran the pipeline" in refused.stderr, refused.stderr
    made = cli("stack", "user", "add", "dpo-reviewer", "--grant", MODEL_NAME)
    assert made.returncode == 0 and f"MANAGE on {MODEL_NAME}" in made.stdout, made.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in cli("stack", "env", "--user", "dpo-reviewer")
                   .stdout.splitlines())  # fmt: skip
    assert exports["MLFLOW_TRACKING_USERNAME"] == "dpo-reviewer"
    env |= {k: v for k, v in exports.items() if k.startswith("MLFLOW_TRACKING_")}
    approved = cli("approve", MODEL_NAME, "1", "--note", "report and audit read")
    assert approved.returncode == 0 and "approved by dpo-reviewer" in approved.stdout, approved.stderr
    assert cli("pending", MODEL_NAME).stdout == "nothing waits for a decision\n"  # other tests' models may wait
    audit = cli("audit", MODEL_NAME, "1")
    assert audit.returncode == 0 and "(approved): OK" in audit.stdout, audit.stdout + audit.stderr
    last = cli("demo")
    assert last.returncode == 0 and "nothing pending" in last.stdout, last.stderr[-2000:]
    assert "approved" in cli("history", MODEL_NAME).stdout
    unknown = cli("history", "no-such-model")
    assert unknown.returncode != 0 and "no registered model named 'no-such-model'" in unknown.stderr
