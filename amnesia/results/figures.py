"""The figures the gate bounds and the report shows, read from evaluations: one evaluation's scores,
and the candidate's comparisons with its base (recoveries, relative utility and held-out retain)."""

from __future__ import annotations

from amnesia.results.evaluation import Evaluation
from amnesia.science.metrics.registry import (
    all_figures,
    attack_recoveries,
    forget_score,
    retain_score,
    worst_recoveries,
)


def scores(ev: Evaluation) -> dict[str, float | None]:
    """One evaluation's figures as the gate and the report read them: every flat figure plus the scores."""
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
    return attack_recoveries(base.attacks, candidate.attacks)


def _ratio(candidate: float | None, base: float | None) -> float | None:
    return candidate / base if base and candidate is not None else None


def comparisons(base: Evaluation, candidate: Evaluation) -> dict[str, float | None]:
    """Every recovery, the worst per attack, and the candidate's utility and held-out retain relative to
    the base model's."""
    rec = recoveries(base, candidate)
    return (
        dict(rec)
        | {
            "mmlu_relative_to_base": _ratio(candidate.mmlu, base.mmlu),
            "held_out_retain_relative_to_base": _ratio(
                retain_score(candidate.retain_held_out), retain_score(base.retain_held_out)
            ),
        }
        | worst_recoveries(rec)
    )


def table_rows(base: Evaluation, candidate: Evaluation) -> list[tuple[str, float | None, float | None]]:
    """(figure, base, candidate) for the report: every per-task figure, then the named ones both sides
    have (scores and the registered metrics' figures, in order)."""
    b, c = scores(base), scores(candidate)
    names = sorted(k for k in set(b) | set(c) if k.count(".") == 2 and not k.startswith("attack."))
    names += [f.name for f in all_figures() if f.name in b or f.name in c]
    return [(n, b.get(n), c.get(n)) for n in names]
