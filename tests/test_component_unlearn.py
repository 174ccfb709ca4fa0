"""The unlearn component in kfp.local, and `amnesia unlearn`, on a tiny model (a few steps, for speed)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from kfp import local

from amnesia.demo.prepare import DemoArtifacts, demo_split_config
from amnesia.results.split import SplitResult
from amnesia.results.trace import TraceResult
from amnesia.stages.split.stage import run_split
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from components.unlearn import unlearn


def _split(store: ArtifactStore, demo_build: DemoArtifacts, prefix: str) -> SplitResult:
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:1])
    return run_split(demo_split_config(demo_build.world_uri), RunContext("p", f"{prefix}/runs/p", store))


def test_spec() -> None:
    assert set(unlearn.component_spec.inputs) == {
        "config_json",
        "pipeline_run_id",
        "store_root",
        "model_uri",
        "model_config",
        "split_json",
        "trace_json",
        "evaluate_config",  # these four: for unlearn.search (empty otherwise)
        "gate_config",
        "plan_json",
        "original_uri",
        "search_json",  # the search fanned out as tasks (cluster.search_parallel): its choice
    }


def test_runs_in_kfp_local(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix)
    trace = TraceResult(
        uri="s3://x/trace", digest="d", layers=[1], rule="explicit", counts={}, mlp_last_subject_effect=[],
        heatmaps=[], noise_std=0.1,
    )  # fmt: skip
    cfg = UnlearnConfig(method="grad_diff", max_steps=3, batch_size=4, early_stop_forget_exact=None)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = unlearn(
        config_json=cfg.model_dump_json(),
        pipeline_run_id="kfp-unlearn-1",
        store_root=s3_prefix,
        model_uri=str(tiny_model_dir),
        model_config="{}",
        split_json=split.model_dump_json(),
        trace_json=trace.model_dump_json(),
    )
    result = json.loads(task.outputs["result"])
    assert task.outputs["model_uri"] == result["uri"]
    assert result["layers"] == [1] and result["steps"] == 3 and result["method"] == "grad_diff"
    assert task.outputs["model_out"].metadata == {"store_uri": result["uri"], "digest": result["digest"]}
    assert store.verify(result["uri"]).digest == result["digest"]


def test_cli_unlearn(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"unlearn": {"layers": [0], "max_steps": 2, "batch_size": 4, "target": "attn"}}))
    base = ["unlearn", "--config", str(cfg), "--model", str(tiny_model_dir), "--root", s3_prefix, "--no-track"]
    out = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", *base, "--split", split.uri, "--run-id", "cli-u"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "method    sha256 on attn of layers [0]" in out.stdout and "curves    s3://" in out.stdout
    cfg.write_text(yaml.safe_dump({"unlearn": {"method": "npo", "method_args": {"beta": -1}}}))
    bad = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", *base, "--split", split.uri], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        f"Error: {cfg}: unlearn: method_args: beta: Input should be greater than 0"
    )
