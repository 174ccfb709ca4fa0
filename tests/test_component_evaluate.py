"""The evaluate and gate components in kfp.local, and `amnesia evaluate`, on a tiny model (fast)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from kfp import local

from amnesia.demo.prepare import DemoArtifacts, demo_split_config
from amnesia.results.split import SplitResult
from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.split.stage import run_split
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from components.evaluate import evaluate
from components.gate import gate


def _split(store: ArtifactStore, demo_build: DemoArtifacts, prefix: str) -> SplitResult:
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:1])
    return run_split(demo_split_config(demo_build.world_uri), RunContext("p", f"{prefix}/runs/p", store))


def test_specs() -> None:
    assert set(evaluate.component_spec.inputs) == {
        "config_json", "pipeline_run_id", "store_root", "model_uri", "model_config", "split_json", "role", "plan_json"
    }  # fmt: skip
    assert {"passed", "reasons", "result", "report"} <= set(gate.component_spec.outputs)


def test_evaluate_then_gate_in_kfp_local(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix)
    # No attacks: this tests the components' wiring (tests/test_attacks.py and test_evaluate.py run them).
    cfg = EvaluateConfig(max_new_tokens=32, mmlu=MMLUConfig(uri=join(demo_build.world_uri, "utility"), shots=0),
                         attacks=None)  # fmt: skip
    no_ceilings = {"quantization_recovery_ceiling": None, "relearning_recovery_ceiling": None}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    common = {"config_json": cfg.model_dump_json(), "pipeline_run_id": "kfp-eval", "store_root": s3_prefix,
              "split_json": split.model_dump_json(), "model_config": "{}"}  # fmt: skip
    base = evaluate(model_uri=demo_build.model_uri, role="base", **common)
    cand = evaluate(model_uri=str(tiny_model_dir), role="candidate", **common)
    base_ev = json.loads(base.outputs["Output"])
    assert base_ev["forget"]["Task2"]["knowledge"] == 1.0 and base_ev["role"] == "base"
    assert base.outputs["evaluation_out"].metadata["store_uri"] == base_ev["uri"]

    verdict = gate(
        config_json=GateConfig(retain_floor=0.5, **no_ceilings).model_dump_json(), pipeline_run_id="kfp-eval",
        store_root=s3_prefix,
        base_json=base.outputs["Output"], candidate_json=cand.outputs["Output"], trace_json="", unlearn_json="",
    )  # fmt: skip
    # A random model forgets everything and keeps nothing: the retain floor fails it.
    assert verdict.outputs["passed"] is False
    assert verdict.outputs["reasons"].startswith("retain_score 0.")
    html = Path(verdict.outputs["report"].path).read_text()
    assert "Gate: FAIL" in html and "data:image/png;base64," in html


def test_cli_evaluate_exits_3_when_the_gate_fails(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix)
    cfg = tmp_path / "run.yaml"
    utility = join(demo_build.world_uri, "utility")
    evaluate_cfg = {"max_new_tokens": 4, "mia": False, "mmlu": {"uri": utility, "shots": 0}}
    cfg.write_text(yaml.safe_dump({"evaluate": evaluate_cfg, "gate": {"forget_floor": 0.9}}))
    args = ["evaluate", "--config", str(cfg), "--model", str(tiny_model_dir), "--candidate", str(tiny_model_dir),
            "--split", split.uri, "--root", s3_prefix, "--no-track"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "amnesia.cli", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert "gate    FAIL" in out.stdout and "retain_score" in out.stdout and "report  s3://" in out.stdout
    assert out.stdout.index("forget_score") < out.stdout.index("gate    FAIL")  # the before/after table first
