"""The settings search fanned out: on a cluster each trial is its own task (a dsl.ParallelFor), in two rounds.

- round 1 (`plan_round(1)`) draws the startup trials: the warm start, then the seeded sampler's random draws,
  the same first draws as the search in one process makes; it also makes the base evaluation once, into the
  evaluation cache every trial reads;
- round 2 draws the rest with TPE told round 1's results (constant liar: a draw pending in the same round counts
  as a poor result, so the next one looks elsewhere), and each of its trials is pruned against round 1's
  held-out curves. Trials of one round run at once and cannot see each other's curves;
- `choose` attacks the best `attack_top`, picks as the search in one process does, and records the result.

Every task rebuilds the study in memory from the trials before it (their settings, state, margin and curve), so
the same seed and inputs give the same draws and the same choice. A finished trial leaves its record, plain
evaluation, forget scores and trained tensors under <run>/unlearn/search/trials for the choosing task.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from amnesia.core.config import ModelConfig
from amnesia.results.evaluation import Evaluation
from amnesia.results.plan import RunPlan
from amnesia.results.search import SearchResult, Trial, Value
from amnesia.results.split import SplitResult
from amnesia.science.unlearning.methods import method_class
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.evaluate.stage import run_evaluate
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.search.stage import (
    Plain,
    log_trial,
    new_study,
    record,
    search_params,
    searcher,
    suggest,
    warm_settings,
)
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.stage import reference_for
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.models import as_model_config
from amnesia.storage.uri import join


def round_sizes(cfg: UnlearnConfig) -> tuple[int, int]:
    """(round 1's trials, round 2's): the sampler's random startup draws, then the rest."""
    assert cfg.search is not None
    first = min(cfg.search.startup(), cfg.search.trials)
    return first, cfg.search.trials - first


def draw(cfg: UnlearnConfig, round_: int, told: list[Trial], warm: dict[str, Value] | None) -> list[dict[str, Any]]:
    """The settings of one round's trials, numbered after the trials told (the same on every call)."""
    assert cfg.search is not None
    cls = method_class(cfg.method)
    space = cfg.search.space_for(cls.search_space)
    fields = cls.config_cls.model_fields
    study = new_study(cfg.search, space, fields, told, batch=True)
    count = round_sizes(cfg)[round_ - 1]
    if round_ == 1 and warm:
        study.enqueue_trial(warm)
    items = []
    for _ in range(count):
        ot = study.ask()
        number = len(told) + len(items)
        origin = "warm start" if warm and round_ == 1 and number == 0 else "random" if round_ == 1 else "tpe"
        items.append({"number": number, "params": {n: suggest(ot, n, r, fields) for n, r in space.items()},
                      "origin": origin})  # fmt: skip
    return items


def plan_round(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, evaluate: EvaluateConfig,
    plan: RunPlan | None, original: ModelConfig | None, round_: int, told: list[Trial], started: float | None,
    inputs: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """The round's items as JSON: each a trial's number, settings and origin, with what its task needs besides
    (the trials told, when the search started, and `inputs`: the upstream tasks' outputs it reads). Without
    unlearn.search, after the search's wall-time budget, or with nothing left to draw: one item that says skip."""
    started = started or time.time()
    given = {"started": started, "told": [t.model_dump(mode="json") for t in told], "inputs": inputs or {}}
    skip = [json.dumps({"skip": True} | given)]  # a round with nothing to run still has one item
    search = cfg.search
    if search is None:
        return skip
    if round_ == 1:  # once, before the trials read it from the cache
        run_evaluate(evaluate, ctx, as_model_config(original or model), split, "base", plan)
    elif search.budget_s is not None and time.time() - started > search.budget_s:
        ctx.log.info("search: the budget of %.0f s is spent after round 1; round 2 draws nothing", search.budget_s)
        return skip
    warm = warm_settings(ctx, model, cfg) if round_ == 1 else None
    items = draw(cfg, round_, told, warm)
    ctx.log.info("search: round %d draws %d trials", round_, len(items))
    return [json.dumps(i | given) for i in items] or skip


def started_at(items: list[str]) -> float:
    """When the search started, from any item of its first round."""
    return float(json.loads(items[0])["started"])


def told_in(item: str) -> list[Trial]:
    return [Trial.model_validate(t) for t in json.loads(item)["told"]]


def inputs_in(item: str) -> dict[str, str]:
    """The upstream outputs a trial task reads, carried by its item (see tasks.search_trial)."""
    return dict(json.loads(item)["inputs"])


def trials_uri(ctx: RunContext, *parts: str) -> str:
    return join(L.stage_uri(ctx.root, "search"), L.SEARCH_TRIALS, *parts)


def run_trial(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, trace_layers: list[int] | None,
    evaluate: EvaluateConfig, gate: GateConfig, plan: RunPlan | None, original: ModelConfig | None, item: str,
) -> Trial | None:  # fmt: skip
    """One trial, as the search in one process runs it, pruned against the trials its item says were told; a
    finished one leaves its tensors and plain evaluation for `choose`. None for a skip item."""
    drawn = json.loads(item)
    if drawn.get("skip") or cfg.search is None:
        return None
    told = told_in(item)
    cls = method_class(cfg.method)
    space = cfg.search.space_for(cls.search_space)
    study = new_study(cfg.search, space, cls.config_cls.model_fields, told)
    study.enqueue_trial(drawn["params"])
    ot = study.ask()
    params = {n: suggest(ot, n, r, cls.config_cls.model_fields) for n, r in space.items()}
    search = searcher(cfg, ctx, model, split, trace_layers, evaluate, gate, plan, original)
    start = search.start_weights()
    trial = search.trial(drawn["number"], ot, params, drawn["origin"], start, reference_for(cfg, search.prep.model))
    if trial.state == "complete":
        evaluation, scores = search.plain()
        with tempfile.TemporaryDirectory() as tmp:
            save_file(search.trained(), Path(tmp) / "w.safetensors")
            ctx.store.put_file(Path(tmp) / "w.safetensors", trials_uri(ctx, f"{trial.number}.safetensors"))
        record_ = {"trial": trial.model_dump(), "evaluation": evaluation.model_dump(), "forget_scores": scores}
        ctx.store.put_json(record_, trials_uri(ctx, f"{trial.number}.json"))
    ctx.log.info("search: trial %d %s (%s)", trial.number, trial.state, trial.stopped)
    return trial


def choose(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, trace_layers: list[int] | None,
    evaluate: EvaluateConfig, gate: GateConfig, plan: RunPlan | None, original: ModelConfig | None,
    trials: list[Trial], started: float, parallel: int | None,
) -> SearchResult | None:  # fmt: skip
    """The attacks on the best trials, the choice, the table, plot and lineage (each trial a child run).
    None without unlearn.search."""
    if cfg.search is None:
        return None
    trials = sorted(trials, key=lambda t: t.number)
    search = searcher(cfg, ctx, model, split, trace_layers, evaluate, gate, plan, original)
    scored: dict[int, Plain] = {}
    for t in trials:
        if t.state == "complete":
            kept = ctx.store.get_json(trials_uri(ctx, f"{t.number}.json"))
            scored[t.number] = Evaluation.model_validate(kept["evaluation"]), kept["forget_scores"]

    def weights(number: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return load_file(ctx.store.get_file(trials_uri(ctx, f"{number}.safetensors"), Path(tmp) / "w"))

    stopped = "trials" if len(trials) >= cfg.search.trials else "budget"
    warm = next((t.params for t in trials if t.origin == "warm start"), None)
    lineage = ctx.lineage
    with lineage.stage("search", search_params(cfg)) if lineage is not None else nullcontext() as run:
        for t in trials:
            log_trial(lineage, run, t)
        chosen = search.choose(trials, scored, weights)
        return record(cfg, ctx, run, trials, chosen, stopped, time.time() - started, warm, parallel)
