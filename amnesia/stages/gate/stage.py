"""Stage 5 — gate: does the candidate clear every configured floor? Pass or fail, with the reasons.

Scores the gate reads (all in [0, 1]; amnesia.science.metrics.registry has their definitions and directions):
- forget score = harmonic mean of (1 - value) over the forget metrics (overall, and per task);
- retain score = harmonic mean of the retain metrics (and of the held-out retain documents');
- MMLU accuracy, absolute and as a share of the base model's; the MIA score; attack recoveries;
- any figure by name under `floors:` (a ceiling for a figure where lower is better);
- each standing obligation the run's plan checks: that earlier request's own forget score, per request.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from amnesia.results.evaluation import Evaluation
from amnesia.results.figures import comparisons, recoveries, scores
from amnesia.results.gate import Check, GateResult, Verdict, tag_codes
from amnesia.results.plan import RunPlan
from amnesia.results.trace import TraceResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.metrics.registry import direction, forget_score, retain_score
from amnesia.science.plots import recovery_bars, tradeoff
from amnesia.stages.gate import report
from amnesia.stages.gate.config import GateConfig
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.uri import join


def obligation_check(request_id: str) -> str:
    return f"obligation.{request_id}.forget_score"


def request_check(request_id: str, figure: str = "forget_score") -> str:
    return f"request.{request_id}.{figure}"


def decide(cfg: GateConfig, base: Evaluation, candidate: Evaluation, plan: RunPlan | None = None) -> Verdict:
    got = scores(candidate) | comparisons(base, candidate)
    wanted: list[tuple[str, float | None, float, bool]] = []

    def bound(name: str, threshold: float | None) -> None:
        if threshold is not None:
            wanted.append((name, got.get(name), threshold, direction(name) == "lower"))

    bound("forget_score", cfg.forget_floor)
    if cfg.forget_task_floor is not None:
        for task in candidate.forget:
            bound(f"forget_score.{task}", cfg.forget_task_floor)
    bound("retain_score", cfg.retain_floor)
    bound("held_out_retain_score", cfg.held_out_retain_floor)
    bound("mmlu", cfg.mmlu_floor)
    bound("mmlu_relative_to_base", cfg.mmlu_relative_floor)
    bound("mia_score", cfg.mia_floor)
    bound("held_out_retain_relative_to_base", cfg.held_out_retain_relative_floor)
    bound("quantization_recovery", cfg.quantization_recovery_ceiling)
    bound("relearning_recovery", cfg.relearning_recovery_ceiling)
    for name, threshold in sorted(cfg.floors.items()):
        bound(name, threshold)
    for rid, person in sorted(candidate.requests.items()):  # this run's requests, one by one
        if cfg.per_request_floor is not None:
            got[request_check(rid)] = person.forget_score
            bound(request_check(rid), cfg.per_request_floor)
        for figure, ceiling in (("extraction", cfg.per_request_extraction_ceiling),
                                ("membership", cfg.per_request_membership_ceiling)):  # fmt: skip
            if ceiling is not None:  # a missing figure is "not measured": a failure
                wanted.append((request_check(rid, figure), getattr(person, figure), ceiling, True))
    if cfg.per_request_floor is not None:
        for ref in plan.obligations if plan else []:  # a missing figure is "not measured": a failure
            found = candidate.obligations.get(ref.request_id)
            got[obligation_check(ref.request_id)] = found.forget_score if found else None
            bound(obligation_check(ref.request_id), cfg.per_request_floor)
    checks = [
        Check(name=n, value=v, floor=f, ceiling=up, passed=v is not None and (v <= f if up else v >= f))
        for n, v, f, up in wanted
    ]
    return Verdict(passed=all(c.passed for c in checks), checks=checks)


# ---------------------------------------------------------------- the stage


def run_gate(
    cfg: GateConfig,
    ctx: RunContext,
    base: Evaluation,
    candidate: Evaluation,
    trace: TraceResult | None = None,
    unlearn: UnlearnResult | None = None,
    plan: RunPlan | None = None,
) -> GateResult:
    verdict = decide(cfg, base, candidate, plan)
    uri = L.stage_uri(ctx.root, "gate")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = {"Forget / retain trade-off": _tradeoff(cfg, base, candidate, folder / "src" / "tradeoff.png")}
        if (plot := recovery_plot(cfg, base, candidate, folder / "src" / "recovery.png")) is not None:
            images["Attacks: recovery"] = plot
        if trace is not None:
            for h in trace.heatmaps:
                images[f"Causal trace, {Path(h).stem.replace('_', ' ')}"] = ctx.store.get_file(
                    h, folder / "src" / Path(h).name
                )
        if unlearn is not None:
            curves = ctx.store.get_file(join(unlearn.report_uri, L.CURVES_PNG), folder / "src" / L.CURVES_PNG)
            images["Unlearning curves"] = curves
        if unlearn is not None and unlearn.search is not None:
            images["Settings search: each trial's closest gate check"] = ctx.store.get_file(
                join(unlearn.search.uri, L.SEARCH_PNG), folder / "src" / L.SEARCH_PNG
            )
        inputs = report.ReportInputs(
            ctx.pipeline_run_id, base, candidate, verdict, images, _facts(base, candidate, trace, unlearn, plan), plan,
            unlearn.search if unlearn is not None else None,
        )  # fmt: skip
        report.write(inputs, folder / "report")
        verdict_json = {
            "passed": verdict.passed,
            "codes": [c.code() for c in verdict.checks if not c.passed],
            "reasons": verdict.reasons,  # the failed checks, or every check of a pass: the summary prints them
            "checks": [c.model_dump(mode="json") for c in verdict.checks],
        }
        (folder / "report" / L.VERDICT).write_text(json.dumps(verdict_json))  # read by the exit handler
        ref = ctx.store.put_dir(folder / "report", uri)
        result = GateResult(
            passed=verdict.passed,
            reasons=verdict.reasons,
            codes=[c.code() for c in verdict.checks if not c.passed],
            checks=verdict.checks,
            report_uri=uri,
            report_digest=ref.digest,
        )
        if ctx.lineage is not None:
            _record_lineage(ctx, result, base, candidate, folder / "report")
    ctx.log.info("gate: %s (%s)", "pass" if result.passed else "fail", "; ".join(result.reasons))
    return result


def recovery_plot(cfg: GateConfig, base: Evaluation, candidate: Evaluation, path: Path) -> Path | None:
    """Every recovery per attack variant against its ceiling; None when no attack ran."""
    by_variant: dict[str, dict[str, float]] = {}
    for key, value in recoveries(base, candidate).items():
        variant, metric = key.removeprefix("recovery.").rsplit(".", 1)
        by_variant.setdefault(variant, {})[metric] = value
    if not by_variant:
        return None
    ceilings = {"quant": cfg.quantization_recovery_ceiling, "rtt": cfg.relearning_recovery_ceiling}
    return recovery_bars(by_variant, ceilings, path)


def _tradeoff(cfg: GateConfig, base: Evaluation, candidate: Evaluation, path: Path) -> Path:
    points = {}
    for name, ev in (("base", base), ("candidate", candidate)):
        points[name] = (forget_score(ev.forget) or 0.0, retain_score(ev.retain) or 0.0)
    return tradeoff(points, (cfg.forget_floor, cfg.retain_floor), path)


def _facts(
    base: Evaluation,
    candidate: Evaluation,
    trace: TraceResult | None,
    unlearn: UnlearnResult | None,
    plan: RunPlan | None = None,
) -> list[tuple[str, str]]:
    facts = [
        ("original model", f"{base.model_uri} ({(base.model_digest or 'no digest')[:16]})"),
        ("candidate", f"{candidate.model_uri} ({(candidate.model_digest or 'no digest')[:16]})"),
        ("utility set", candidate.mmlu_sampling),
        ("evaluations", f"{base.uri} · {candidate.uri}"),
    ]
    if plan is not None:
        start = f"{plan.model_name} v{plan.start_version} (champion)" if plan.start_version else "the original model"
        facts.insert(1, ("started from", f"{plan.mode}: {start} ({(plan.start_digest or 'no digest')[:16]})"))
        facts.append(("earlier requests", f"{len(plan.obligations)} of {len(plan.earlier)} checked — {plan.sampling}"))
        if candidate.drift:
            parts = [f"{candidate.drift['original']:.4f} from the original"] if "original" in candidate.drift else []
            if "previous_champion" in candidate.drift:
                parts.append(f"{candidate.drift['previous_champion']:.4f} from v{plan.start_version} (the champion)")
            facts.append(("weight drift (relative L2)", "; ".join(parts)))
        if plan.ended:
            facts.append(("obligations ended", f"{', '.join(plan.ended)}: key destroyed, no longer checked"))
    if trace is not None:
        sure = f", confidence {trace.confidence:.1f}" if trace.confidence is not None else ""
        facts.append(("layers (trace)", f"{trace.layers} — {trace.rule}{sure} ({trace.method} tracing)"))
        if trace.warning:
            facts.append(("WARNING (trace)", trace.warning))
    if unlearn is not None:
        facts.append(("method", f"{unlearn.method} on {unlearn.target} of layers {unlearn.layers}, "
                                f"{unlearn.trainable_params:,} of {unlearn.total_params:,} parameters, "
                                f"{unlearn.steps} steps ({unlearn.stopped})"))  # fmt: skip
        if unlearn.search is not None:
            facts.append(("settings", f"chosen by the settings search: {unlearn.search.line()}"))
    return facts


def _record_lineage(ctx: RunContext, result: GateResult, base: Evaluation, candidate: Evaluation, folder: Path) -> None:
    assert ctx.lineage is not None
    with ctx.lineage.stage("gate") as run:
        run.set_tags(
            {
                Tag.GATE_PASSED: str(result.passed).lower(),
                Tag.GATE_REASONS: tag_codes([c for c in result.checks if not c.passed]),
                Tag.REPORT_URI: result.report_uri,
            }
        )
        cand = {k: v for k, v in scores(candidate).items() if v is not None}
        robust = {k: v for k, v in comparisons(base, candidate).items() if v is not None}
        run.log_metrics(cand | robust | {f"base.{k}": v for k, v in scores(base).items() if v is not None})
        run.log_artifact(folder, "report")
