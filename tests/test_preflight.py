"""The head of the DAG: what would fail after minutes of compute fails in seconds, in one line naming the
field or URI, and the run summary shows that line under the stage."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from amnesia.core.config import ModelConfig
from amnesia.core.errors import LineageError
from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, demo_split_config
from amnesia.runtime.preflight import PreflightError, run_preflight
from amnesia.runtime.summary import summarize
from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage, Tag, recorded_errors
from amnesia.storage.uri import join
from pipelines.local import run_local
from tests.test_pipeline import _config


def test_checks_name_the_field_that_is_wrong(
    demo_build: DemoArtifacts, store: ArtifactStore, stack_settings: Settings, s3_prefix: str, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    ctx = RunContext("pf", f"{s3_prefix}/runs/pf", store, Lineage("pf", settings=stack_settings))
    split = demo_split_config(demo_build.world_uri)
    evaluate = EvaluateConfig(mmlu=MMLUConfig(uri=join(demo_build.world_uri, "utility")))
    ok = run_preflight(ctx, ModelConfig(uri=demo_build.model_uri), split, evaluate)
    assert ok.checks[0].startswith("store: ") and ok.checks[1].startswith("mlflow: ")
    assert f"model.uri: {demo_build.model_uri}" in ok.checks and any(c.startswith("split.corpus") for c in ok.checks)
    # The plan: no champion of a new model, so from the original, pinned by its digest, with no obligations.
    assert ok.plan.mode == "original" and ok.plan.original_digest == demo_build.model_digest
    assert ok.plan.start_uri == demo_build.model_uri and ok.plan.obligations == []
    assert ok.checks[-1].startswith("plan: ")
    from amnesia.core.config import HistoryConfig
    from amnesia.runtime.plan import PlanError

    with pytest.raises(PlanError, match="start: incremental needs a champion of pf-new-model; none is approved yet"):
        run_preflight(ctx, ModelConfig(uri=demo_build.model_uri), split, evaluate, "pf-new-model",
                      HistoryConfig(start="incremental"))  # fmt: skip

    def fails(model: str, match: str, **changes: object) -> None:
        s = split.model_copy(update=changes)
        with pytest.raises(PreflightError, match=match):
            run_preflight(ctx, ModelConfig(uri=model), s, evaluate)

    fails(f"{s3_prefix}/no-such-model", f"model.uri: {s3_prefix}/no-such-model: no _manifest.json")
    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    fails(str(no_tokenizer), r"weights-only: no tokenizer \(tokenizer.json")
    fails(str(tmp_path / "absent"), "absent: no such model folder")
    fails(" ", "model.uri: no model given")
    fails(
        demo_build.model_uri, f"split.corpus: {s3_prefix}/nope.jsonl does not exist", corpus=f"{s3_prefix}/nope.jsonl"
    )
    fails(
        demo_build.model_uri, "split.mia_members: data/members.jsonl does not exist", mia_members="data/members.jsonl"
    )

    down = stack_settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    ctx_down = RunContext("pf2", f"{s3_prefix}/runs/pf2", store, Lineage("pf2", settings=down))
    with pytest.raises(LineageError, match="MLflow at http://127.0.0.1:9: not reachable"):
        run_preflight(ctx_down, ModelConfig(uri=demo_build.model_uri), split, evaluate)


def test_a_wrong_model_uri_stops_the_run_at_preflight_in_seconds(
    demo_build: DemoArtifacts, stack_settings: Settings, s3_prefix: str, tmp_path: Path
) -> None:
    cfg = _config(demo_build, s3_prefix, "pf-model")
    cfg = cfg.model_copy(update={"model": ModelConfig(uri=f"{s3_prefix}/no-such-model")})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        run_local(cfg, stack_settings, "pf-run", tmp_path / "kfp")
    took = time.monotonic() - t0
    text = "\n".join(summarize(cfg, stack_settings, "pf-run"))
    assert "status  failed (stopped at: preflight)" in text, text
    assert f"error   preflight: model.uri: {s3_prefix}/no-such-model: no _manifest.json" in text, text
    errors = recorded_errors(ArtifactStore(stack_settings), f"{s3_prefix}/runs/pf-run")
    assert list(errors) == ["preflight"]  # no compute stage ran, so nothing else failed
    lineage = Lineage("pf-run", settings=stack_settings)
    stages = lineage.client.search_runs([lineage.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = 'pf-run'")
    assert {r.data.tags.get(Tag.ROLE) for r in stages} == {"pipeline"}  # no stage run was opened
    print(f"failed at preflight after {took:.1f} s")
    assert took < 120
