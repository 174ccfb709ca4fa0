"""The trace component in kfp.local, and `amnesia trace`, on the demo model (few facts, for speed)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from kfp import local

from amnesia.demo.prepare import DemoArtifacts, demo_split_config
from amnesia.stages.split.stage import run_split
from amnesia.stages.trace.config import TraceConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from components.trace import trace


def _split(store: ArtifactStore, demo_build: DemoArtifacts, prefix: str):  # type: ignore[no-untyped-def]
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:2])
    return run_split(demo_split_config(demo_build.world_uri), RunContext("p", f"{prefix}/runs/p", store))


def test_spec() -> None:
    assert set(trace.component_spec.inputs) == {
        "config_json",
        "pipeline_run_id",
        "store_root",
        "model_uri",
        "model_config",
        "split_json",
    }


def test_runs_in_kfp_local(demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    split = _split(store, demo_build, s3_prefix)
    cfg = TraceConfig(window=2, k=2, max_facts=8, heatmap_facts=1, method="hybrid")  # 8: above the noise bar
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = trace(
        config_json=cfg.model_dump_json(),
        pipeline_run_id="kfp-trace-1",
        store_root=s3_prefix,
        model_uri=demo_build.model_uri,
        model_config='{"device": "cpu", "dtype": "fp32"}',
        split_json=split.model_dump_json(),
    )
    result = json.loads(task.outputs["Output"])
    assert result["counts"]["traced"] == 8 and result["layers"] == [0, 1] and result["confidence"] > 3
    assert task.outputs["trace_out"].metadata == {"store_uri": result["uri"], "digest": result["digest"]}
    assert store.verify(result["uri"]).digest == result["digest"]


def test_cli_trace(demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    split = _split(store, demo_build, s3_prefix)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"trace": {"window": 2, "layers": [1, 3], "max_facts": 2}}))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "amnesia.cli",
            "trace",
            "--config",
            str(cfg),
            "--model",
            demo_build.model_uri,
            "--split",
            split.uri,
            "--root",
            s3_prefix,
            "--run-id",
            "cli-t",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "layers    [1, 3] (explicit; exact tracing)" in out.stdout and "heatmap   s3://" in out.stdout
