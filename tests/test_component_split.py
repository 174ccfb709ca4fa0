"""The split component: its spec, and a real run in kfp.local against the session stack."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from kfp import local

from amnesia.core.settings import load_settings
from amnesia.demo.world import WorldConfig, generate
from amnesia.stages.split.config import SplitConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.records import load_records
from components import IMAGE
from components.split import split


def test_spec() -> None:
    spec = split.component_spec
    assert set(spec.inputs) == {"config_json", "pipeline_run_id", "store_root", "request_digest", "plan_json"}
    assert set(spec.outputs) == {"splits", "Output"}
    assert spec.implementation.container.image == IMAGE


def test_runs_in_kfp_local(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    files = generate(WorldConfig(seed=5, forget_people=2, retain_people=5, nonmember_people=2)).write(tmp_path / "w")
    cfg = SplitConfig(
        corpus=str(files / "corpus.jsonl"),
        requests=str(files / "requests.jsonl"),
        mia_nonmembers=str(files / "mia" / "nonmember.jsonl"),
    )
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = split(config_json=cfg.model_dump_json(), pipeline_run_id="kfp-split-1", store_root=s3_prefix)
    result = json.loads(task.outputs["Output"])
    assert result["uri"] == f"{s3_prefix}/runs/kfp-split-1/split"
    assert result["digest"] == store.read_manifest(result["uri"]).digest
    artifact = task.outputs["splits"]
    assert artifact.metadata == {"store_uri": result["uri"], "digest": result["digest"]}
    assert json.loads(Path(artifact.path).read_text()) == result
    forget = load_records(result["sets"]["forget_train"]["uri"], cache_root=tmp_path / "c")
    assert len({r.document_id for r in forget}) == 2


def test_cli_split(tmp_path: Path, s3_prefix: str, store: ArtifactStore) -> None:
    files = generate(WorldConfig(seed=6, forget_people=2, retain_people=4, nonmember_people=1)).write(tmp_path / "w")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({"split": {"corpus": str(files / "corpus.jsonl"), "requests": str(files / "requests.jsonl")}})
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "amnesia.cli",
            "split",
            "--config",
            str(cfg),
            "--root",
            s3_prefix,
            "--run-id",
            "cli-split-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"split cli-split-1: {s3_prefix}/runs/cli-split-1/split" in out.stdout
    assert "forget_train        16 records      2 documents" in out.stdout
    # on its own, the command closes the parent run it opened (it used to stay RUNNING forever)
    from amnesia.storage.lineage import Lineage, Tag

    lineage = Lineage("cli-split-1", settings=load_settings())
    query = f"tags.`{Tag.PIPELINE_RUN_ID}` = 'cli-split-1' and tags.`{Tag.ROLE}` = 'pipeline'"
    parent = lineage.client.search_runs([lineage.experiment_id], query)[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.user"]
    cfg.write_text(yaml.safe_dump({"split": {"corpus": str(files / "corpus.jsonl")}}))
    bad = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", "split", "--config", str(cfg), "--no-track"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "split: request mode needs both corpus and requests" in bad.stderr
    # MLflow down: one line before anything is written (it used to write the split, then fail on lineage)
    cfg.write_text(
        yaml.safe_dump({"split": {"corpus": str(files / "corpus.jsonl"), "requests": str(files / "requests.jsonl")}})
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    args = ["split", "--config", str(cfg), "--root", s3_prefix, "--run-id", "cli-split-2"]
    down = subprocess.run([sys.executable, "-m", "amnesia.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
    assert "Error: MLflow at http://127.0.0.1:9: not reachable" in down.stderr
    assert store.list(f"{s3_prefix}/runs/cli-split-2") == []
