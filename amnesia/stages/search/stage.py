"""The settings search: before unlearning, find the settings that pass this run's gate by the widest margin.

Each trial (Optuna: TPE, seeded, with a median pruner) unlearns from the same start model and layers with one
draw of the searched settings, on the run's own split:
- while it trains, the trainer's held-out curve (min(forgotten share, retained share of the start's)) goes to
  the pruner, which stops a trial that is below the median of earlier trials at the same step;
- a finished trial is scored by the evaluate stage's code (without the attacks) and the gate's own checks
  (without the attack ceilings); its objective is the smallest normalised margin over them (Check.margin);
- the attacks, which cost most, run on the best `attack_top` trials only, and the gate's full checks choose.

The chosen settings then run in the unlearn stage as any config would (the same seed gives the same weights).
Trials run one after another in this process; each is an MLflow child run of the search's stage run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from amnesia.core.config import ModelConfig
from amnesia.results.evaluation import Evaluation
from amnesia.results.gate import PER_PERSON, Verdict
from amnesia.results.plan import RunPlan
from amnesia.results.search import SearchResult, Trial, Value
from amnesia.results.split import SplitResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.plots import search_trials
from amnesia.science.unlearning.methods import method_class
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.evaluate.stage import Inputs, Scored, attack_figures, run_evaluate, score_model
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.gate.stage import decide
from amnesia.stages.search.config import TRAINING_FIELDS, ParamRange, SearchConfig
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.stage import Prepared, prepare, reference_for, run_unlearn, trainer_for
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.models import as_model_config, resolve_model
from amnesia.storage.uri import join

Scorer = Callable[[torch.nn.Module, bool], Scored]  # (model, attacks?) -> its figures
Plain = tuple[Evaluation, list[float]]  # a finished trial without the attacks: its evaluation, its forget scores

SEARCH_JSON, SEARCH_MD, SEARCH_PNG = L.SEARCH_JSON, L.SEARCH_MD, L.SEARCH_PNG


def plain_gate(gate: GateConfig) -> GateConfig:
    """The gate without the checks only the attacks can measure: what every trial is scored against."""
    floors = {k: v for k, v in gate.floors.items() if not k.startswith(("attack.", "recovery."))}
    return gate.model_copy(update={"quantization_recovery_ceiling": None, "relearning_recovery_ceiling": None,
                                   "floors": floors})  # fmt: skip


def _kind(name: str, method_fields: dict[str, Any]) -> Any:
    field = name.removeprefix("method_args.")
    return TRAINING_FIELDS.get(name) or (method_fields[field].annotation if field in method_fields else float)


def suggest(trial: Any, name: str, rng: ParamRange, method_fields: dict[str, Any]) -> Value:
    if rng.choices is not None:
        return trial.suggest_categorical(name, rng.choices)  # type: ignore[no-any-return]
    assert rng.low is not None and rng.high is not None
    if _kind(name, method_fields) is int:
        return trial.suggest_int(name, int(rng.low), int(rng.high), log=rng.log)  # type: ignore[no-any-return]
    return trial.suggest_float(name, rng.low, rng.high, log=rng.log)  # type: ignore[no-any-return]


def distribution(name: str, rng: ParamRange, method_fields: dict[str, Any]) -> Any:
    """The Optuna distribution `suggest` draws from: what a trial told from elsewhere is recorded with."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if rng.choices is not None:
        return CategoricalDistribution(rng.choices)
    assert rng.low is not None and rng.high is not None
    if _kind(name, method_fields) is int:
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log)
    return FloatDistribution(rng.low, rng.high, log=rng.log)


def new_study(search: SearchConfig, space: dict[str, ParamRange], method_fields: dict[str, Any],
              told: Sequence[Trial] = (), batch: bool = False) -> Any:  # fmt: skip
    """The seeded study (TPE, median pruner), with trials run elsewhere told as they ended. batch: several trials
    are drawn before any is told (a fanned-out round), so each pending draw counts as a poor result (constant
    liar) and the next draw looks elsewhere."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=search.startup(), n_warmup_steps=1)
              if search.prune else optuna.pruners.NopPruner())  # fmt: skip
    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup(), constant_liar=batch)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    dists = {name: distribution(name, rng, method_fields) for name, rng in space.items()}
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}  # fmt: skip
    for t in sorted(told, key=lambda t: t.number):
        known = {k: v for k, v in t.params.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(
            state=states[t.state], value=t.margin if t.state == "complete" else None, params=known,
            distributions={k: dists[k] for k in known}, intermediate_values={int(s): v for s, v in t.curve.items()},
        ))  # fmt: skip
    return study


def headline(verdict: Verdict) -> dict[str, float]:
    """A trial's figures as the gate saw them; this run's people as their lowest forget score."""
    out = {c.name: c.value for c in verdict.checks if c.value is not None and not c.name.startswith(PER_PERSON)}
    people = [c.value for c in verdict.checks if c.name.startswith(PER_PERSON) and c.value is not None]
    return out | ({"lowest_request_forget_score": min(people)} if people else {})


class _Pruned(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


@dataclass
class Search:
    """The trial loop over a prepared model (no store: the stage and the benchmarks share it)."""

    cfg: UnlearnConfig
    prep: Prepared
    score: Scorer
    base: Evaluation
    gate: GateConfig
    plan: RunPlan | None = None
    log: logging.Logger = logging.getLogger("amnesia")
    on_trial: Callable[[Trial], None] = lambda trial: None

    def run(self, warm: dict[str, Value] | None, folder: Path) -> tuple[list[Trial], int, str]:
        """(every trial, the chosen trial's number, what ended the search: trials or budget)."""
        import optuna

        search = self.cfg.search
        assert search is not None
        cls = method_class(self.cfg.method)
        space = search.space_for(cls.search_space)
        fields = cls.config_cls.model_fields
        study = new_study(search, space, fields)
        if warm:
            study.enqueue_trial(warm)
        start = self.start_weights()
        reference = reference_for(self.cfg, self.prep.model)
        trials: list[Trial] = []
        scored: dict[int, Plain] = {}
        t0, stopped = time.monotonic(), "trials"
        for number in range(search.trials):
            if search.budget_s is not None and time.monotonic() - t0 > search.budget_s:
                stopped = "budget"
                break
            ot = study.ask()
            params = {name: suggest(ot, name, rng, fields) for name, rng in space.items()}
            origin = "warm start" if warm and number == 0 else "random" if number < search.startup() else "tpe"
            trial = self.trial(number, ot, params, origin, start, reference)  # type: ignore[arg-type]
            if trial.state == "complete":
                study.tell(ot, trial.margin)
                scored[number] = self.plain()
                save_file(self.trained(), folder / f"{number}.safetensors")  # for the attacks, if among the best
            else:
                study.tell(ot, state=optuna.trial.TrialState.PRUNED if trial.state == "pruned"
                           else optuna.trial.TrialState.FAIL)  # fmt: skip
            trials.append(trial)
            self.on_trial(trial)
            self.log.info("search: trial %d %s: %s", number, trial.state, _describe(trial))
        chosen = self.choose(trials, scored, lambda number: load_file(folder / f"{number}.safetensors"))
        self.load(start)  # leave the model as it came
        return trials, chosen, stopped

    def _named(self) -> dict[str, torch.nn.Parameter]:
        names = set(self.prep.names)
        return {n: p for n, p in self.prep.model.named_parameters() if n in names}

    def start_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self._named().items()}

    def trained(self) -> dict[str, torch.Tensor]:
        """The trained tensors of the trial just run (what the attacks need, if it ends among the best)."""
        return {n: p.detach().contiguous() for n, p in self._named().items()}

    def plain(self) -> Plain:
        """The trial just run, as the attacks need it: its evaluation and its forget items' scores."""
        return self._last.result, [i["score"] for i in self._last.items if i["set"] == "forget"]

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self._named().items():
                p.copy_(weights[n])

    def trial(
        self, number: int, ot: Any, params: dict[str, Value], origin: str, start: dict[str, torch.Tensor],
        reference: torch.nn.Module | None,
    ) -> Trial:  # fmt: skip
        t0 = time.monotonic()
        self.load(start)
        try:
            cfg = self.cfg.with_settings(params)
        except ValueError as err:  # a draw the method refuses (its own constraints)
            return Trial(number=number, params=params, state="failed", origin=origin, steps=0,  # type: ignore[arg-type]
                         stopped=f"invalid settings: {err}".splitlines()[0][:200], seconds=0.0)  # fmt: skip
        first: dict[str, float] = {}
        curve: dict[int, float] = {}

        def report(kind: str, row: dict[str, float]) -> None:
            if kind != "eval":
                return
            if not first:
                first.update(row)
                return
            kept = row["retain_exact"] / max(first["retain_exact"], 1e-6)
            step = int(row["step"])
            curve[step] = round(min(1.0 - row["forget_exact"], kept), 6)
            ot.report(curve[step], step)
            if ot.should_prune():
                raise _Pruned(step)

        trainer = trainer_for(cfg, self.prep, self.prep.model, reference, on_record=report)
        try:
            state = trainer.train()
        except _Pruned as p:
            return Trial(number=number, params=params, state="pruned", origin=origin, steps=p.step,  # type: ignore[arg-type]
                         stopped=f"pruned at step {p.step}", seconds=round(time.monotonic() - t0, 1),
                         curve=curve)  # fmt: skip
        self.prep.model.eval()
        self._last = self.score(self.prep.model, False)
        verdict = decide(plain_gate(self.gate), self.base, self._last.result, self.plan)
        tight = verdict.tightest()
        return Trial(
            number=number, params=params, state="complete", origin=origin, steps=state.step,  # type: ignore[arg-type]
            stopped=state.stopped, seconds=round(time.monotonic() - t0, 1), margin=round(verdict.margin(), 6),
            tightest=tight.name if tight else None, passed=verdict.passed, figures=headline(verdict), curve=curve,
        )  # fmt: skip

    def choose(self, trials: list[Trial], scored: dict[int, Plain],
               weights: Callable[[int], dict[str, torch.Tensor]]) -> int:  # fmt: skip
        """The best `attack_top` trials by margin get the attacks and the gate's full checks; the best of them
        by that margin is chosen (ties: the earlier trial). Without a finished trial: a one-line error.
        scored and weights: each finished trial's plain evaluation and trained tensors, by number."""
        done = sorted((t for t in trials if t.state == "complete"), key=lambda t: (-(t.margin or -9), t.number))
        if not done:
            raise ValueError(f"unlearn.search: none of the {len(trials)} trials finished (all pruned or failed); "
                             "widen search.space or give search.trials more")  # fmt: skip
        search = self.cfg.search
        assert search is not None
        g = self.gate
        attacked = g.quantization_recovery_ceiling is not None or g.relearning_recovery_ceiling is not None
        top = done[: search.attack_top] if attacked else []
        for t in top:
            self.load(weights(t.number))
            self.prep.model.eval()
            forget, forget_scores = scored[t.number]
            figures, _rows = attack_figures(
                self._evaluate_cfg(), self.prep.model, self.prep.tokenizer, self._forget_records(), forget_scores,
                f"trial {t.number}", self.log,
            )  # fmt: skip
            verdict = decide(self.gate, self.base, forget.model_copy(update={"attacks": figures}), self.plan)
            tight = verdict.tightest()
            t.attacked_margin, t.passed = round(verdict.margin(), 6), verdict.passed
            t.attacked_tightest = tight.name if tight else None
            t.figures = headline(verdict)
            self.log.info("search: trial %d attacked: margin %+.3f", t.number, t.attacked_margin)
        pool = top or done
        key = (lambda t: (-(t.attacked_margin or -9), t.number)) if top else (lambda t: (-(t.margin or -9), t.number))
        return sorted(pool, key=key)[0].number

    # set by the stage: the evaluation config and the forget records the attacks re-score
    evaluate_cfg: EvaluateConfig | None = None
    forget_records: list[Any] | None = None

    def _evaluate_cfg(self) -> EvaluateConfig:
        assert self.evaluate_cfg is not None
        return self.evaluate_cfg

    def _forget_records(self) -> list[Any]:
        assert self.forget_records is not None
        return self.forget_records


def _describe(t: Trial) -> str:
    settings = ", ".join(f"{k.removeprefix('method_args.')}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in sorted(t.params.items()))  # fmt: skip
    if t.state != "complete":
        return f"{settings} ({t.stopped}, {t.seconds:.0f} s)"
    return f"{settings}: margin {t.margin:+.3f} ({t.tightest}), {t.steps} steps, {t.seconds:.0f} s"


# ---------------------------------------------------------------- the stage


def warm_settings(ctx: RunContext, model: ModelConfig, cfg: UnlearnConfig) -> dict[str, Value] | None:
    """The settings the start model was chosen with (its folder's unlearn summary), when its method is this
    run's and they lie in this search's space: last month's answer is this month's first guess."""
    assert cfg.search is not None
    if not cfg.search.warm_start:
        return None
    try:
        folder, _ = resolve_model(model.uri, store=ctx.store)
    except Exception:  # a hub id or an unreadable folder: no warm start, not an error
        return None
    summary = folder / L.UNLEARN_SUMMARY if folder is not None else None
    if summary is None or not summary.exists():
        return None
    import json

    made = json.loads(summary.read_text())
    found = (made.get("search") or {}).get("params")
    if made.get("method") != cfg.method or not found:
        return None
    space = cfg.search.space_for(method_class(cfg.method).search_space)
    inside = {k: v for k, v in found.items() if k in space and _within(space[k], v)}
    return inside if set(inside) == set(space) else None


def _within(rng: ParamRange, value: Value) -> bool:
    if rng.choices is not None:
        return value in rng.choices
    return isinstance(value, int | float) and rng.low <= value <= rng.high  # type: ignore[operator]


def searcher(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, trace_layers: list[int] | None,
    evaluate: EvaluateConfig, gate: GateConfig, plan: RunPlan | None, original: ModelConfig | str | None,
) -> Search:  # fmt: skip
    """A Search over this run's data: the base evaluation (the original model's, from the evaluation cache when
    an earlier task made it, so the pipeline's evaluate-base reuses it too), the prepared start model."""
    base = run_evaluate(evaluate, ctx, as_model_config(original or model), split, "base", plan)
    prep = prepare(cfg, ctx, model, split, trace_layers)
    inputs = Inputs.load(evaluate, ctx, split, plan, "candidate")
    plain_cfg = evaluate.model_copy(update={"attacks": None})

    def score(m: torch.nn.Module, attacks: bool) -> Scored:
        identity = {"model_uri": "search trial", "model_digest": None, "placement": {}, "uri": "", "key": None}
        return score_model(evaluate if attacks else plain_cfg, ctx, split, inputs, m, prep.tokenizer, "trial",
                           identity)[0]  # fmt: skip

    return Search(cfg, prep, score, base, gate, plan, ctx.log, evaluate_cfg=evaluate,
                  forget_records=inputs.sets["forget"])  # fmt: skip


def search_params(cfg: UnlearnConfig) -> dict[str, Any]:
    """The search's stage run params (lineage)."""
    assert cfg.search is not None
    space = cfg.search.space_for(method_class(cfg.method).search_space)
    return {"method": cfg.method, "trials": cfg.search.trials, "seed": cfg.search.seed,
            "attack_top": cfg.search.attack_top, "space": ",".join(sorted(space))}  # fmt: skip


def log_trial(lineage: Any, run: Any, trial: Trial) -> None:
    """One trial as an MLflow child run of the search's stage run: its settings, state, margin and figures."""
    if lineage is None or run is None:
        return
    with lineage.stage(f"search-trial-{trial.number}", trial.params, parent=run) as tr:
        tr.set_tags({"amnesia.trial.state": trial.state, "amnesia.trial.origin": trial.origin,
                     "amnesia.trial.tightest": trial.tightest or "none"})  # fmt: skip
        tr.log_metrics({"steps": trial.steps, "seconds": trial.seconds}
                       | ({"margin": trial.margin} if trial.margin is not None else {})
                       | {k: v for k, v in trial.figures.items()})  # fmt: skip


def record(
    cfg: UnlearnConfig, ctx: RunContext, run: Any, trials: list[Trial], chosen: int, stopped: str, seconds: float,
    warm: dict[str, Value] | None, parallel: int | None = None,
) -> SearchResult:  # fmt: skip
    """The search's result: the table and plot stored under <run>/unlearn/search, the choice in lineage."""
    assert cfg.search is not None
    space = cfg.search.space_for(method_class(cfg.method).search_space)
    best = next(t for t in trials if t.number == chosen)
    margin = best.attacked_margin if best.attacked_margin is not None else best.margin
    result = SearchResult(
        uri=L.stage_uri(ctx.root, "search"), method=cfg.method, seed=cfg.search.seed,
        space={k: v.model_dump() for k, v in space.items()}, trials=trials, chosen=chosen, params=best.params,
        margin=margin or 0.0, passed=bool(best.passed), stopped=stopped, seconds=round(seconds, 1),  # type: ignore[arg-type]
        warm_start=warm, parallel=parallel,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "search"
        write_table(result, folder)
        for name in (SEARCH_JSON, SEARCH_MD, SEARCH_PNG):  # beside the trials' own files, when fanned out
            ctx.store.put_file(folder / name, join(result.uri, name))
        if run is not None:
            run.log_metrics({"chosen": chosen, "margin": result.margin, "seconds": result.seconds}
                            | {f"count_{k}": v for k, v in result.counts().items()})  # fmt: skip
            run.set_tags({"amnesia.search.chosen": str(chosen), "amnesia.search.stopped": stopped})
            run.log_params({f"chosen.{k}": v for k, v in result.params.items()})
            run.log_artifact(folder / SEARCH_PNG, "search")
            run.log_artifact(folder / SEARCH_MD, "search")
    ctx.log.info("search: %s", result.line())
    return result


def run_search(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: ModelConfig | str,
    split: SplitResult,
    trace_layers: list[int] | None,
    evaluate: EvaluateConfig,
    gate: GateConfig,
    plan: RunPlan | None = None,
    original: ModelConfig | str | None = None,
) -> SearchResult:
    """The stage, its trials one after another in this process: the table and plot under
    <run>/unlearn/search, each trial an MLflow child run of the search's stage run."""
    assert cfg.search is not None, "run_search needs unlearn.search"
    t0 = time.monotonic()
    model_cfg = as_model_config(model)
    search = searcher(cfg, ctx, model_cfg, split, trace_layers, evaluate, gate, plan, original)
    warm = warm_settings(ctx, model_cfg, cfg)
    lineage = ctx.lineage
    with lineage.stage("search", search_params(cfg)) if lineage is not None else nullcontext() as run:
        search.on_trial = lambda trial: log_trial(lineage, run, trial)
        with tempfile.TemporaryDirectory() as tmp:
            trials, chosen, stopped = search.run(warm, Path(tmp))
        return record(cfg, ctx, run, trials, chosen, stopped, time.monotonic() - t0, warm)


def table_rows(result: SearchResult) -> list[dict[str, Any]]:
    return [t.model_dump() | {"chosen": t.number == result.chosen} for t in result.trials]


def markdown(result: SearchResult) -> str:
    head, rows = result.table()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_table(result: SearchResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SEARCH_JSON).write_text(result.model_dump_json(indent=1))
    (folder / SEARCH_MD).write_text(f"Settings search: {result.line()}\n\n{result.note()}\n\n" + markdown(result))
    search_trials(table_rows(result), folder / SEARCH_PNG)


def search_then_unlearn(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: ModelConfig | str,
    split: SplitResult,
    trace_layers: list[int] | None,
    evaluate: EvaluateConfig | None,
    gate: GateConfig | None,
    plan: RunPlan | None = None,
    original: ModelConfig | str | None = None,
    found: SearchResult | None = None,
) -> UnlearnResult:
    """The unlearn step as the pipeline and `amnesia unlearn` run it: with unlearn.search, the search first
    (scored by the evaluate and gate configs, against the original model), then the stage on its choice.
    found: the search already ran (fanned out as tasks of its own): the stage runs its choice."""
    if cfg.search is None:
        return run_unlearn(cfg, ctx, model, split, trace_layers)
    if found is None:
        if evaluate is None or gate is None:
            raise ValueError("unlearn.search: scoring trials needs the run's evaluate and gate configs")
        found = run_search(cfg, ctx, model, split, trace_layers, evaluate, gate, plan, original)
    return run_unlearn(cfg.with_settings(found.params), ctx, model, split, trace_layers, found)
