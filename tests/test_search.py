"""The settings search (unlearn.search): its config, its objective, and real searches on the demo world.

The real runs use the session's stack (S3 and MLflow) and the demo model, on four of the demo's requests, with
the demo's gate and a small attack budget; every figure comes from the evaluate stage's own code."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from amnesia.core.errors import ConfigError
from amnesia.demo.prepare import DemoArtifacts, demo_evaluate_config, demo_gate_config, demo_split_config
from amnesia.results.figures import scores
from amnesia.results.gate import Check, Verdict
from amnesia.science.attack_config import AttackConfig, QuantizationAttackConfig, RelearningAttackConfig
from amnesia.stages.evaluate.stage import run_evaluate
from amnesia.stages.search.stage import SEARCH_JSON, SEARCH_MD, SEARCH_PNG, plain_gate, run_search, warm_settings
from amnesia.stages.split.stage import run_split
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.stage import run_unlearn
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage
from amnesia.storage.models import as_model_config
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join

# ---------------------------------------------------------------- the objective and the config


def test_a_margin_reads_alike_for_floors_and_ceilings() -> None:
    floor = Check(name="retain_score", value=0.9, floor=0.6, passed=True)
    assert floor.margin() == pytest.approx(0.75)  # three quarters of the way from the floor to 1
    assert Check(name="x", value=0.6, floor=0.6, passed=True).margin() == 0.0
    assert Check(name="x", value=0.3, floor=0.6, passed=False).margin() == pytest.approx(-0.75)
    ceiling = Check(name="relearning_recovery", value=0.05, floor=0.25, passed=True, ceiling=True)
    assert ceiling.margin() == pytest.approx(0.8)
    assert Check(name="x", value=0.5, floor=0.25, passed=False, ceiling=True).margin() == pytest.approx(-1.0)
    assert Check(name="x", value=None, floor=0.25, passed=False, ceiling=True).margin() == -1.0
    verdict = Verdict(passed=True, checks=[floor, ceiling])
    assert verdict.margin() == pytest.approx(0.75) and verdict.tightest() is floor


def test_trials_are_scored_without_the_checks_only_attacks_measure() -> None:
    gate = demo_gate_config().model_copy(update={"floors": {"recovery.quant.int4-g128-sym.all": 0.1, "mia_score": 0.2}})
    plain = plain_gate(gate)
    assert plain.quantization_recovery_ceiling is None and plain.relearning_recovery_ceiling is None
    assert plain.floors == {"mia_score": 0.2} and plain.forget_floor == gate.forget_floor


@pytest.mark.parametrize(
    ("search", "words"),
    [
        ({"space": {"method_args.nope": {"low": 1, "high": 2}}}, "has no field 'nope'"),
        ({"space": {"target": {"choices": ["mlp"]}}}, "'target' is not searchable"),
        ({"space": {"lr": {"low": 1e-3, "high": 1e-4}}}, "low < high"),
        ({"space": {"lr": {"low": 0, "high": 1e-3}}}, "log range needs low > 0"),
        ({"trials": 0}, "unlearn.search.trials"),
    ],
)
def test_a_bad_search_config_is_one_line_naming_the_field(search: dict, words: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from amnesia.core.config import load_run_config
    from amnesia.runtime.pipeline_config import PipelineConfig

    path = tmp_path / "run.yaml"

    path.write_text(yaml.safe_dump({"model": "m", "split": {"forget": "f.jsonl", "retain": "r.jsonl"},
                                    "unlearn": {"search": search}}))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_run_config(path, PipelineConfig)
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_trial_s_settings_replace_the_config_s_and_drop_the_search() -> None:
    cfg = UnlearnConfig(method_args={"m_min": 5.0, "a": 0.5}, lr=1e-3, search={"trials": 3})
    assert cfg.search is not None and set(cfg.search.space_for({"m_min": (1, 10)})) == {"lr", "method_args.m_min"}
    run = cfg.with_settings({"lr": 2e-4, "method_args.m_min": 2.5})
    assert run.search is None and run.lr == 2e-4 and run.method_args == {"m_min": 2.5, "a": 0.5}


# ---------------------------------------------------------------- real searches


def _split(store: ArtifactStore, demo_build: DemoArtifacts, prefix: str, run: str):  # type: ignore[no-untyped-def]
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:4])
    return run_split(demo_split_config(demo_build.world_uri), RunContext(run, f"{prefix}/runs/{run}", store))


# The search's seed in the reproducibility test: with it the sampler draws lr 1e-3 for the two random startup
# trials and 1e-7 for the third, whatever their margins (Optuna's draws, checked without training), so the
# pruner has its two finished trials to compare the hopeless one with. Seed 0 never drew 1e-7 in 5 trials.
SEED = 85
ATTACKS = AttackConfig(quantization=QuantizationAttackConfig(bits=[4], schemes=["sym"]),
                       relearning=RelearningAttackConfig(folds=2, steps=10))  # fmt: skip


def test_the_search_chooses_settings_that_pass_and_the_unlearn_stage_reproduces_them(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, stack_settings
) -> None:  # fmt: skip
    """Three trials on the demo model (the sampler's random startup): every trial recorded, the best by the
    gate's own margin attacked and chosen, the table and plot stored, each trial an MLflow child run; then the
    unlearn stage on the chosen settings gives the very figures the trial had."""
    split = _split(store, demo_build, s3_prefix, "search-1")
    ctx = RunContext("search-1", f"{s3_prefix}/runs/search-1", store, Lineage("search-1", settings=stack_settings))
    evaluate = demo_evaluate_config(demo_build.world_uri).model_copy(update={"attacks": ATTACKS})
    gate = demo_gate_config()
    cfg = UnlearnConfig(layers=[0, 1], retain_batch_size=32, epochs=60, search={"trials": 3, "attack_top": 1})
    result = run_search(cfg, ctx, demo_build.model_uri, split, None, evaluate, gate)

    assert [t.number for t in result.trials] == [0, 1, 2] and result.stopped == "trials"
    done = [t for t in result.trials if t.state == "complete"]
    assert done and all(t.margin is not None and t.tightest for t in done)
    chosen = next(t for t in result.trials if t.number == result.chosen)
    assert chosen.margin == max(t.margin for t in done)  # attack_top 1: the best plain trial is the one attacked
    assert chosen.attacked_margin is not None and result.margin == chosen.attacked_margin
    assert result.passed == chosen.passed and result.params == chosen.params and set(result.params) == {
        "lr", "method_args.m_min", "method_args.m_max"}  # fmt: skip
    assert "relearning_recovery" in chosen.figures and "forget_score" in chosen.figures

    md = store.get_bytes(join(result.uri, SEARCH_MD)).decode()
    assert md.count("\n| ") >= 4 and f"| {result.chosen} (chosen) |" in md
    png = Image.open(io.BytesIO(store.get_bytes(join(result.uri, SEARCH_PNG))))
    assert png.size[0] > 300 and len(set(png.convert("RGB").get_flattened_data())) > 10  # drawn, not blank
    assert store.get_json(join(result.uri, SEARCH_JSON))["chosen"] == result.chosen

    client = ctx.lineage.client  # type: ignore[union-attr]
    parent = ctx.lineage.parent_run_id()  # type: ignore[union-attr]
    stage = client.search_runs([ctx.lineage.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")  # type: ignore[union-attr]
    search_run = next(r for r in stage if r.data.tags.get("mlflow.runName") == "search")
    trials = client.search_runs([ctx.lineage.experiment_id],  # type: ignore[union-attr]
                                f"tags.`mlflow.parentRunId` = '{search_run.info.run_id}'")  # fmt: skip
    assert len(trials) == 3 and search_run.data.params["chosen.lr"] == str(result.params["lr"])

    # the chosen settings, run by the unlearn stage in its usual way: the trial's figures, exactly
    ran = run_unlearn(cfg.with_settings(result.params), ctx, demo_build.model_uri, split, None, result)
    assert ran.search is not None and ran.search.chosen == result.chosen
    plain = evaluate.model_copy(update={"attacks": None, "cache": False})
    ev = run_evaluate(plain, ctx, ran.uri, split, "candidate")
    assert scores(ev)["forget_score"] == chosen.figures["forget_score"]
    assert scores(ev)["retain_score"] == chosen.figures["retain_score"]
    # next month's search on this model tries these settings first (its folder's summary carries them)
    assert warm_settings(ctx, as_model_config(ran.uri), cfg) == result.params


def test_the_same_seed_and_inputs_give_the_same_trials_and_a_hopeless_trial_is_pruned(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str
) -> None:  # fmt: skip
    """Two searches, same seed and inputs: the same trials, settings, margins and choice. The third draw, an lr
    of 1e-7, forgets nothing: once two trials have finished, the median pruner stops it at its first evaluation."""
    split = _split(store, demo_build, s3_prefix, "search-2")
    evaluate = demo_evaluate_config(demo_build.world_uri).model_copy(update={"attacks": None, "mmlu": None})
    gate = demo_gate_config().model_copy(update={"mmlu_relative_floor": None})
    space = {"lr": {"choices": [1e-3, 3e-4, 1e-7]}}
    cfg = UnlearnConfig(layers=[0, 1], retain_batch_size=32, epochs=60,
                        search={"trials": 3, "startup_trials": 2, "attack_top": 0, "seed": SEED, "space": space})
    runs = []
    for attempt in ("a", "b"):
        ctx = RunContext(f"search-2{attempt}", f"{s3_prefix}/runs/search-2{attempt}", store)
        runs.append(run_search(cfg, ctx, demo_build.model_uri, split, None, evaluate, gate))
    a, b = runs
    same = ("number", "params", "state", "steps", "stopped", "margin", "tightest", "passed", "figures")
    assert [t.model_dump(include=set(same)) for t in a.trials] == [t.model_dump(include=set(same)) for t in b.trials]
    assert a.chosen == b.chosen and a.params == b.params
    assert [t.params["lr"] for t in a.trials] == [1e-3, 1e-3, 1e-7], a.trials
    pruned = [t for t in a.trials if t.state == "pruned"]
    assert [(t.number, t.steps) for t in pruned] == [(2, 10)], a.trials
    assert a.params["lr"] != 1e-7
