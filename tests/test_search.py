"""The settings search (unlearn.search): its config, its objective, and real searches on the demo world.

The real runs use the session's stack (S3 and MLflow) and the demo model, on four of the demo's requests, with
the demo's gate and a small attack budget; every figure comes from the evaluate stage's own code."""

from __future__ import annotations

import io
import json

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
    # the stop rule is a setting too: how much forgetting is enough trades against the held-out people
    stop = UnlearnConfig(search={"space": {"early_stop_forget_exact": {"low": 0.02, "high": 0.4}}})
    assert stop.with_settings({"early_stop_forget_exact": 0.2}).early_stop_forget_exact == 0.2


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


# ---------------------------------------------------------------- fanned out (a cluster's ParallelFor)


def test_fanned_out_rounds_draw_alike_and_round_two_is_pruned_against_round_one(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str
) -> None:  # fmt: skip
    """The fan-out's tasks, called as separate tasks would be (each loads the model itself): round 1 draws the
    sequential search's startup draws; drawing again gives the same settings; a hopeless round-2 trial is pruned
    at its first evaluation against round 1's curves (it never sees another round-2 trial); the choice is the
    best finished trial and the table says the trials fanned out."""
    from amnesia.stages.search import fanout

    split = _split(store, demo_build, s3_prefix, "fan-1")
    ctx = RunContext("fan-1", f"{s3_prefix}/runs/fan-1", store)
    evaluate = demo_evaluate_config(demo_build.world_uri).model_copy(update={"attacks": None, "mmlu": None})
    gate = demo_gate_config().model_copy(update={"mmlu_relative_floor": None})
    space = {"lr": {"choices": [1e-3, 3e-4, 1e-7]}}
    cfg = UnlearnConfig(layers=[0, 1], retain_batch_size=32, epochs=60,
                        search={"trials": 3, "startup_trials": 2, "attack_top": 0, "seed": SEED, "space": space})
    model = as_model_config(demo_build.model_uri)
    items = fanout.plan_round(cfg, ctx, model, split, evaluate, None, None, 1, [], None)
    drawn = [json.loads(i) for i in items]
    assert [(d["number"], d["params"]["lr"], d["origin"]) for d in drawn] == [(0, 1e-3, "random"), (1, 1e-3, "random")]
    first = [fanout.run_trial(cfg, ctx, model, split, None, evaluate, gate, None, None, i) for i in items]
    assert all(t is not None and t.state == "complete" and t.curve for t in first), first
    told = [t for t in first if t is not None]
    started = fanout.started_at(items)
    again = fanout.plan_round(cfg, ctx, model, split, evaluate, None, None, 2, told, started)
    assert again == fanout.plan_round(cfg, ctx, model, split, evaluate, None, None, 2, told, started)
    assert [json.loads(i)["number"] for i in again] == [2] and json.loads(again[0])["origin"] == "tpe"
    assert fanout.told_in(again[0]) == told  # what the round-2 task prunes against travels in its item

    hopeless = json.loads(again[0]) | {"params": {"lr": 1e-7}}
    pruned = fanout.run_trial(cfg, ctx, model, split, None, evaluate, gate, None, None, json.dumps(hopeless))
    assert pruned is not None and (pruned.state, pruned.steps) == ("pruned", 10), pruned
    assert not store.exists(fanout.trials_uri(ctx, "2.safetensors"))  # only a finished trial leaves tensors
    assert store.exists(fanout.trials_uri(ctx, "0.safetensors")) and store.exists(fanout.trials_uri(ctx, "1.json"))

    result = fanout.choose(cfg, ctx, model, split, None, evaluate, gate, None, None, [*told, pruned], started, 2)
    assert result is not None and result.parallel == 2 and result.stopped == "trials"
    assert result.chosen == max(told, key=lambda t: (t.margin, -t.number)).number
    assert "2 at a time in two rounds" in store.get_bytes(join(result.uri, SEARCH_MD)).decode()
    unsearched = cfg.model_copy(update={"search": None})
    skip = fanout.plan_round(unsearched, ctx, model, split, evaluate, None, None, 1, [], None)
    assert len(skip) == 1 and json.loads(skip[0])["skip"]  # one item: an empty ParallelFor fails
    assert fanout.run_trial(unsearched, ctx, model, split, None, evaluate, gate, None, None, skip[0]) is None


def test_the_search_fans_out_in_the_dag_and_unlearn_runs_its_choice(
    demo_build: DemoArtifacts, store: ArtifactStore, stack_settings, s3_prefix: str, tmp_path  # type: ignore[no-untyped-def]
) -> None:  # fmt: skip
    """The DAG a cluster runs with cluster.search_parallel, in kfp.local: plan → ParallelFor(trials) twice →
    choose → unlearn; the summary's search line, the stored table (fanned out), each trial an MLflow child
    run, and the candidate made with the chosen settings."""
    from mlflow import MlflowClient

    from amnesia.core.config import config_hash
    from amnesia.runtime.pipeline_config import PipelineConfig
    from amnesia.runtime.summary import summarize
    from amnesia.storage.layout import UNLEARN_SUMMARY
    from pipelines.local import run_local

    prefix = f"{s3_prefix}/fanned"
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:2])
    unlearn = UnlearnConfig(layers=[0, 1], retain_batch_size=32, epochs=60,
                            search={"trials": 3, "startup_trials": 2, "seed": SEED})  # fmt: skip
    gate = demo_gate_config().model_copy(update={"mmlu_relative_floor": None, "quantization_recovery_ceiling": None,
                                                 "relearning_recovery_ceiling": None})  # no attacks: for CI's minutes
    cfg = PipelineConfig.model_validate({
        "name": "fan", "model": demo_build.model_uri, "model_name": "fan-model", "store": {"root": prefix},
        "split": demo_split_config(demo_build.world_uri).model_dump(), "trace": {"window": 2, "max_facts": 4,
        "samples": 2}, "unlearn": unlearn.model_dump(), "evaluate": {"max_new_tokens": 48, "mmlu": None,
        "attacks": None}, "gate": gate.model_dump(), "cluster": {"search_parallel": 2},
    })  # fmt: skip
    run_local(cfg, stack_settings, "fan-dag-1", tmp_path / "kfp")

    text = "\n".join(summarize(cfg, stack_settings, "fan-dag-1"))
    assert "status  succeeded (stopped at: end)" in text, text
    line = next(x for x in text.splitlines() if x.startswith("search  "))
    assert line.startswith("search  3 trials") and "chose trial" in line, line
    uri = f"{prefix}/runs/fan-dag-1/unlearn/search"
    found = store.get_json(join(uri, SEARCH_JSON))
    assert found["parallel"] == 2 and [t["origin"] for t in found["trials"]] == ["random", "random", "tpe"]
    made = store.get_json(join(f"{prefix}/runs/fan-dag-1/unlearn/model", UNLEARN_SUMMARY))
    assert made["search"]["chosen"] == found["chosen"]
    chosen = found["params"]  # the candidate was made with them
    assert made["config_hash"] == config_hash(cfg.unlearn.with_settings(chosen))
    assert made["method_args"]["m_min"] == chosen["method_args.m_min"]

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    runs = client.search_runs([experiment], "tags.`mlflow.runName` = 'search'")
    search_run = next(r for r in runs if r.data.params.get("chosen.lr") == str(chosen["lr"]))
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{search_run.info.run_id}'")
    assert len(children) == 3
