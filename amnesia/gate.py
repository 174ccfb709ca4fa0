"""Stage 5 — gate: does the candidate clear every configured floor? Pass or fail, with the reasons.

Scores the gate reads (all in [0, 1], higher is better):
- forget score = harmonic mean of (1 - value) over the forget metrics (overall, and per task);
- retain score = harmonic mean of the retain metrics (and of the held-out retain documents');
- MMLU accuracy, absolute and as a share of the base model's; the MIA score; any reported metric by name.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from amnesia.config import GateConfig
from amnesia.context import RunContext
from amnesia.evaluate import Evaluation
from amnesia.lineage import Tag
from amnesia.plots import recovery_bars, tradeoff
from amnesia.scoring import harmonic_mean
from amnesia.storage import join
from amnesia.trace import TraceResult
from amnesia.unlearn.stage import UnlearnResult


class Check(BaseModel):
    name: str
    value: float | None  # None: not measured (a failure: a floor on a missing figure cannot be cleared)
    floor: float  # the bound: a floor, or with ceiling=True a ceiling
    passed: bool
    ceiling: bool = False  # lower is better (an attack's recovery)

    def reason(self) -> str:
        bound = "ceiling" if self.ceiling else "floor"
        if self.value is None:
            return f"{self.name}: not measured ({bound} {self.floor:.3f})"
        sign = ("<=" if self.passed else ">") if self.ceiling else (">=" if self.passed else "<")
        return f"{self.name} {self.value:.3f} {sign} {bound} {self.floor:.3f}"

    def code(self) -> str:
        """The same as an MLflow-safe token: name=value/floor (a ceiling: name=value/max<ceiling>)."""
        value = "none" if self.value is None else f"{self.value:.3f}"
        return f"{self.name}={value}/{'max' if self.ceiling else ''}{self.floor:.3f}"


class Verdict(BaseModel):
    passed: bool
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """The failed checks, or for a pass every check that was made."""
        failed = [c.reason() for c in self.checks if not c.passed]
        return failed if failed else [c.reason() for c in self.checks]


def forget_score(groups: Mapping[str, Mapping[str, float]]) -> float | None:
    values = [1 - v for metrics in groups.values() for v in metrics.values()]
    return harmonic_mean(values) if values else None


def retain_score(groups: Mapping[str, Mapping[str, float]]) -> float | None:
    values = [v for metrics in groups.values() for v in metrics.values()]
    return harmonic_mean(values) if values else None


def scores(ev: Evaluation) -> dict[str, float | None]:
    """The gate's view of an evaluation: the derived scores plus every flat metric."""
    out: dict[str, float | None] = dict(ev.flat())
    out["forget_score"] = forget_score(ev.forget)
    out["retain_score"] = retain_score(ev.retain)
    out["held_out_retain_score"] = retain_score(ev.retain_held_out)
    for task in ev.forget:
        out[f"forget_score.{task}"] = forget_score({task: ev.forget[task]})
    return out


def recoveries(base: Evaluation, candidate: Evaluation) -> dict[str, float]:
    """recovery.<attack>.<metric>: the share of what unlearning removed (base − candidate, unattacked)
    that the attack brings back in the candidate, in [0, 1]."""
    from amnesia.attacks import recovery

    b, c = base.plain, candidate.plain
    out = {}
    for variant, metrics in candidate.attacks.items():
        if variant != "none":
            for m, attacked in metrics.items():
                if m in b and m in c:
                    out[f"recovery.{variant}.{m}"] = recovery(b[m], c[m], attacked)
    return out


def _worst(figures: Mapping[str, float], prefix: str) -> float | None:
    values = [v for k, v in figures.items() if k.startswith(prefix)]
    return max(values) if values else None


def robustness(base: Evaluation, candidate: Evaluation) -> dict[str, float | None]:
    """The gate's attack and collateral figures: every recovery, the worst per attack, and the held-out
    retain score relative to the base model's."""
    rec = recoveries(base, candidate)
    b, c = retain_score(base.retain_held_out), retain_score(candidate.retain_held_out)
    return dict(rec) | {
        "quantization_recovery": _worst(rec, "recovery.quant."),
        "relearning_recovery": _worst(rec, "recovery.rtt."),
        "held_out_retain_relative_to_base": c / b if b and c is not None else None,
    }


def decide(cfg: GateConfig, base: Evaluation, candidate: Evaluation) -> Verdict:
    got = scores(candidate) | robustness(base, candidate)
    wanted: list[tuple[str, float | None, float, bool]] = []

    def floor(
        name: str, threshold: float | None, value: float | None = None, use_value: bool = False, ceiling: bool = False
    ) -> None:
        if threshold is not None:
            wanted.append((name, value if use_value else got.get(name), threshold, ceiling))

    floor("forget_score", cfg.forget_floor)
    if cfg.forget_task_floor is not None:
        for task in candidate.forget:
            floor(f"forget_score.{task}", cfg.forget_task_floor)
    floor("retain_score", cfg.retain_floor)
    floor("held_out_retain_score", cfg.held_out_retain_floor)
    floor("mmlu", cfg.mmlu_floor)
    if cfg.mmlu_relative_floor is not None:
        rel = candidate.mmlu / base.mmlu if candidate.mmlu is not None and base.mmlu else None
        floor("mmlu_relative_to_base", cfg.mmlu_relative_floor, rel, use_value=True)
    floor("mia_score", cfg.mia_floor)
    floor("held_out_retain_relative_to_base", cfg.held_out_retain_relative_floor)
    floor("quantization_recovery", cfg.quantization_recovery_ceiling, ceiling=True)
    floor("relearning_recovery", cfg.relearning_recovery_ceiling, ceiling=True)
    for name, threshold in sorted(cfg.floors.items()):
        floor(name, threshold)
    checks = [
        Check(name=n, value=v, floor=f, ceiling=up, passed=v is not None and (v <= f if up else v >= f))
        for n, v, f, up in wanted
    ]
    return Verdict(passed=all(c.passed for c in checks), checks=checks)


# ---------------------------------------------------------------- the stage


class GateResult(BaseModel):
    passed: bool
    reasons: list[str]  # human-readable, with the numbers
    codes: list[str]  # the failed checks as name=value/floor (what the MLflow tag holds)
    checks: list[Check]
    report_uri: str  # folder: report.html, report.md, figures
    report_digest: str


def run_gate(
    cfg: GateConfig,
    ctx: RunContext,
    base: Evaluation,
    candidate: Evaluation,
    trace: TraceResult | None = None,
    unlearn: UnlearnResult | None = None,
) -> GateResult:
    from amnesia import report

    verdict = decide(cfg, base, candidate)
    uri = join(ctx.root, "report")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = {"Forget / retain trade-off": _tradeoff(cfg, base, candidate, folder / "src" / "tradeoff.png")}
        rec = recoveries(base, candidate)
        if rec:
            by_variant: dict[str, dict[str, float]] = {}
            for key, value in rec.items():
                _r, rest = key.split(".", 1)
                variant, metric = rest.rsplit(".", 1)
                by_variant.setdefault(variant, {})[metric] = value
            ceilings = {"quant": cfg.quantization_recovery_ceiling, "rtt": cfg.relearning_recovery_ceiling}
            images["Attacks: recovery"] = recovery_bars(by_variant, ceilings, folder / "src" / "recovery.png")
        if trace is not None:
            for h in trace.heatmaps:
                images[f"Causal trace, {Path(h).stem.replace('_', ' ')}"] = ctx.store.get_file(
                    h, folder / "src" / Path(h).name
                )
        if unlearn is not None:
            curves = ctx.store.get_file(join(unlearn.report_uri, "curves.png"), folder / "src" / "curves.png")
            images["Unlearning curves"] = curves
        inputs = report.ReportInputs(
            ctx.pipeline_run_id, base, candidate, verdict, images, _facts(base, candidate, trace, unlearn)
        )
        report.write(inputs, folder / "report")
        verdict_json = {
            "passed": verdict.passed,
            "codes": [c.code() for c in verdict.checks if not c.passed],
            "reasons": verdict.reasons,  # the failed checks, or every check of a pass: the summary prints them
        }
        (folder / "report" / "verdict.json").write_text(json.dumps(verdict_json))  # read by the exit handler
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


def _tradeoff(cfg: GateConfig, base: Evaluation, candidate: Evaluation, path: Path) -> Path:
    points = {}
    for name, ev in (("base", base), ("candidate", candidate)):
        points[name] = (forget_score(ev.forget) or 0.0, retain_score(ev.retain) or 0.0)
    return tradeoff(points, (cfg.forget_floor, cfg.retain_floor), path)


def _facts(
    base: Evaluation, candidate: Evaluation, trace: TraceResult | None, unlearn: UnlearnResult | None
) -> list[tuple[str, str]]:
    facts = [
        ("base model", f"{base.model_uri} ({(base.model_digest or 'no digest')[:16]})"),
        ("candidate", f"{candidate.model_uri} ({(candidate.model_digest or 'no digest')[:16]})"),
        ("utility set", candidate.mmlu_sampling),
        ("evaluations", f"{base.uri} · {candidate.uri}"),
    ]
    if trace is not None:
        sure = f", confidence {trace.confidence:.1f}" if trace.confidence is not None else ""
        facts.append(("layers (trace)", f"{trace.layers} — {trace.rule}{sure} ({trace.method} tracing)"))
        if trace.warning:
            facts.append(("WARNING (trace)", trace.warning))
    if unlearn is not None:
        facts.append(("method", f"{unlearn.method} on {unlearn.target} of layers {unlearn.layers}, "
                                f"{unlearn.trainable_params:,} of {unlearn.total_params:,} parameters, "
                                f"{unlearn.steps} steps ({unlearn.stopped})"))  # fmt: skip
    return facts


def _record_lineage(ctx: RunContext, result: GateResult, base: Evaluation, candidate: Evaluation, folder: Path) -> None:
    assert ctx.lineage is not None
    with ctx.lineage.stage("gate") as run:
        run.set_tags(
            {
                Tag.GATE_PASSED: str(result.passed).lower(),
                Tag.GATE_REASONS: ",".join(result.codes) or "none",
                Tag.REPORT_URI: result.report_uri,
            }
        )
        cand = {k: v for k, v in scores(candidate).items() if v is not None}
        robust = {k: v for k, v in robustness(base, candidate).items() if v is not None}
        run.log_metrics(cand | robust | {f"base.{k}": v for k, v in scores(base).items() if v is not None})
        run.log_artifact(folder, "report")
