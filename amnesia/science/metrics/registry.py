"""What the pipeline measures, in one place: the registry of evaluation metrics, every figure's name and
direction, and the recoveries the gate bounds. Torch-free: the MMLU scorer is handed in (Measured).

- Item metrics (amnesia.science.metrics.items) score one generated answer against its gold output; the
  official scorer's are ROUGE-L recall for sentence completions (its per-task mean is "regurgitation")
  and exact match for questions ("knowledge").
- Evaluation metrics turn what the evaluate stage gathered on one model (per-task item scores,
  generations, MIA document losses, the model itself) into named figures. They run in registration
  order, so a later one may read earlier ones' figures (`final` reads three). A new one is a small class
  with `@register("name")`: its figures then reach the stored evaluation, MLflow, the gate's `floors:`,
  the report table, the run summary and the audit trail (`headline` ones) with no list to edit.
- Scores (one evaluation) and comparisons (candidate against base), read from the stage results, are in
  amnesia.results.figures: what the gate bounds and the report shows.

Every figure lies in [0, 1] and has a direction: higher or lower is better, or `target` (MIA AUC, best
at 0.5: a gate bound on it would be meaningless; its score is what gets bounded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from amnesia.science.metrics.aggregate import (
    final_score,
    harmonic_mean,
    mia_auc,
    mia_score,
    recovery,
    task_aggregate,
)

if TYPE_CHECKING:
    from amnesia.science.records import MMLUQuestion, UnlearningRecord

Direction = Literal["higher", "lower", "target"]
ARROW = {"higher": "↑", "lower": "↓", "target": "→0.5"}


@dataclass(frozen=True)
class Figure:
    name: str
    direction: Direction
    about: str  # one line: what it is
    headline: bool = False  # shown in the run summary and kept in the audit trail


# ---------------------------------------------------------------- named figures beyond the metrics'

SCORES = (
    Figure("forget_score", "higher", "harmonic mean of 1 − forget knowledge and regurgitation", True),
    Figure("retain_score", "higher", "harmonic mean of the retain figures (people unlearning trains on)", True),
    Figure("held_out_retain_score", "higher", "the same on people in neither set: everyone else", True),
)

COMPARISONS = (
    Figure("mmlu_relative_to_base", "higher", "candidate MMLU / base MMLU"),
    Figure("held_out_retain_relative_to_base", "higher", "candidate held-out retain score / the base's"),
    Figure("quantization_recovery", "lower", "worst share of the forgetting a quantization attack undoes"),
    Figure("relearning_recovery", "lower", "worst share of the forgetting a relearning attack undoes"),
)

# Families of figures named by pattern: (prefix, direction). Per-set figures are set.task.figure.
FAMILIES: tuple[tuple[str, Direction], ...] = (
    ("forget_score.", "higher"),
    ("forget.", "lower"),
    ("retain.", "higher"),
    ("retain_held_out.", "higher"),
    ("attack.", "lower"),
    ("recovery.", "lower"),
)


def all_figures() -> list[Figure]:
    """Every named figure: scores, then the registered metrics' in order, then the comparisons."""
    return [*SCORES, *(f for cls in METRICS.values() for f in cls.figures), *COMPARISONS]


# ---------------------------------------------------------------- evaluation metrics


@dataclass
class Measured:
    """What the evaluation gathered on one model, for the metrics to read."""

    cfg: Any  # the evaluate stage's config: its mmlu section (shots, batch_size, format) or None
    role: str
    scores: dict[str, dict[str, dict[str, float]]]  # set (forget, retain, …) -> task -> figure -> mean
    items: dict[str, list[tuple[UnlearningRecord, str, float]]]  # set -> (record, generation, item score)
    losses: tuple[list[float], list[float]] | None = None  # MIA members' and non-members' document losses
    model: Any = None
    tokenizer: Any = None
    questions: list[MMLUQuestion] = field(default_factory=list)
    dev: list[MMLUQuestion] = field(default_factory=list)
    progress: Callable[[int, str, str], Any] | None = None  # (total, what, unit) -> a Progress bar
    figures: dict[str, float | None] = field(default_factory=dict)  # what the metrics before this one gave
    details: dict[str, Any] = field(default_factory=dict)  # side results (MMLU per subject)
    # MMLU's scorer (amnesia.science.mmlu.score_mmlu), given by the caller: the registry itself loads no torch
    score_mmlu: Callable[..., Any] | None = None


class Metric:
    name: ClassVar[str]
    figures: ClassVar[tuple[Figure, ...]]

    def compute(self, m: Measured) -> dict[str, float | None]:
        """Each of its figures' value; None when what it needs was not measured (no MIA split, no MMLU)."""
        raise NotImplementedError


METRICS: dict[str, type[Metric]] = {}


def register(name: str) -> Callable[[type[Metric]], type[Metric]]:
    def add(cls: type[Metric]) -> type[Metric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        taken = {f.name for f in all_figures()}
        if clash := taken & {f.name for f in cls.figures}:
            raise ValueError(f"metric {name!r}: figure names already taken: {sorted(clash)}")
        cls.name = name
        METRICS[name] = cls
        return cls

    return add


def compute(m: Measured) -> dict[str, float | None]:
    """Every registered metric, in order; each sees the figures of those before it."""
    for cls in METRICS.values():
        out = cls().compute(m)
        if set(out) != {f.name for f in cls.figures}:
            raise ValueError(f"metric {cls.name!r} returned {sorted(out)}, declared {[f.name for f in cls.figures]}")
        m.figures |= out
    return dict(m.figures)


@register("task_aggregate")
class TaskAggregate(Metric):
    figures = (Figure("task_aggregate", "higher", "harmonic mean of 1 − forget and of retain figures", True),)

    def compute(self, m: Measured) -> dict[str, float | None]:
        return {"task_aggregate": task_aggregate(m.scores["forget"], m.scores["retain"])}


@register("mia")
class MIA(Metric):
    figures = (
        Figure("mia_auc", "target", "AUC of a loss-threshold membership attack (0.5 = chance)"),
        Figure("mia_score", "higher", "1 − 2·|AUC − 0.5|", True),
    )

    def compute(self, m: Measured) -> dict[str, float | None]:
        if m.losses is None:
            return {"mia_auc": None, "mia_score": None}
        auc = mia_auc(*m.losses)
        return {"mia_auc": auc, "mia_score": mia_score(auc)}


@register("mmlu")
class MMLU(Metric):
    figures = (
        Figure("mmlu", "higher", "utility: MMLU accuracy over all questions", True),
        Figure("mmlu_macro", "higher", "mean of the per-subject MMLU accuracies"),
    )

    def compute(self, m: Measured) -> dict[str, float | None]:
        from contextlib import nullcontext

        c = m.cfg.mmlu
        if c is None or m.model is None:
            return {"mmlu": None, "mmlu_macro": None}
        if m.score_mmlu is None:
            raise ValueError("MMLU is configured but no scorer was given (Measured.score_mmlu)")
        cloze = c.format == "cloze"
        rows = sum(len(q.choices) for q in m.questions) if cloze else len(m.questions)
        unit = "choice" if cloze else "question"
        bar = m.progress(rows, f"evaluate {m.role}: MMLU", unit) if m.progress else nullcontext()
        with bar as b:
            done = b.update if b is not None else (lambda n: None)
            result = m.score_mmlu(m.model, m.tokenizer, m.questions, m.dev, c.shots, c.batch_size, c.format, done)
        m.details["mmlu"] = result
        return {"mmlu": result.accuracy, "mmlu_macro": result.macro}


@register("final")
class Final(Metric):
    figures = (Figure("final", "higher", "mean of task aggregate, MIA score and MMLU (official)", True),)

    def compute(self, m: Measured) -> dict[str, float | None]:
        parts = [m.figures.get(k) for k in ("task_aggregate", "mia_score", "mmlu")]
        return {"final": final_score(*parts) if all(p is not None for p in parts) else None}  # type: ignore[arg-type]


# ---------------------------------------------------------------- scores of one evaluation


def forget_score(groups: Mapping[str, Mapping[str, float]]) -> float | None:
    """Harmonic mean of 1 − each forget figure: 1 when nothing is remembered."""
    values = [1 - v for metrics in groups.values() for v in metrics.values()]
    return harmonic_mean(values) if values else None


def retain_score(groups: Mapping[str, Mapping[str, float]]) -> float | None:
    values = [v for metrics in groups.values() for v in metrics.values()]
    return harmonic_mean(values) if values else None


def direction(name: str) -> Direction | None:
    """A figure's direction by name (a named figure or one of a family); None: not a figure we report."""
    for f in all_figures():
        if f.name == name:
            return f.direction
    return next((d for prefix, d in FAMILIES if name.startswith(prefix)), None)


def headline() -> list[str]:
    return [f.name for f in all_figures() if f.headline]


# ---------------------------------------------------------------- comparisons of candidate and base


def attack_recoveries(
    base: Mapping[str, Mapping[str, float]], candidate: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """The same from two models' attack figures (variant -> metric -> mean, "none" = unattacked)."""
    b, c = base.get("none", {}), candidate.get("none", {})
    out = {}
    for variant, figures in candidate.items():
        if variant != "none":
            for m, attacked in figures.items():
                if m in b and m in c:
                    out[f"recovery.{variant}.{m}"] = recovery(b[m], c[m], attacked)
    return out


def worst_recoveries(rec: Mapping[str, float]) -> dict[str, float | None]:
    """The worst recovery per kind of attack: what the gate's ceilings bound."""
    return {
        "quantization_recovery": _worst(rec, "recovery.quant."),
        "relearning_recovery": _worst(rec, "recovery.rtt."),
    }


def _worst(figures: Mapping[str, float], prefix: str) -> float | None:
    values = [v for k, v in figures.items() if k.startswith(prefix)]
    return max(values) if values else None


def legacy_figures(data: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Evaluations stored before the registry kept the built-in figures at the top level: move them."""
    moved = {k: data.pop(k) for k in list(names) if k in data}
    data["metrics"] = moved | dict(data.get("metrics") or {})
    return data
