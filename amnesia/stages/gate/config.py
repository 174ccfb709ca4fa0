"""Stage 5's config: the floors and ceilings a candidate must clear."""

from __future__ import annotations

from pydantic import Field, model_validator

from amnesia.core.config import StrictModel
from amnesia.stages.evaluate.config import EvaluateConfig


class GateConfig(StrictModel):
    """Stage 5: floors a candidate must clear; each in [0, 1], None turns a check off."""

    forget_floor: float | None = Field(
        0.6, ge=0, le=1, description="Overall forget score: harmonic mean of 1 - each forget metric."
    )
    forget_task_floor: float | None = Field(None, ge=0, le=1, description="The same, per task.")
    retain_floor: float | None = Field(0.6, ge=0, le=1, description="Harmonic mean of the retain metrics.")
    held_out_retain_floor: float | None = Field(
        None, ge=0, le=1, description="The same for retain documents the unlearning never trained on."
    )
    mmlu_floor: float | None = Field(None, ge=0, le=1, description="MMLU accuracy, absolute.")
    mmlu_relative_floor: float | None = Field(
        0.75, ge=0, le=1, description="MMLU accuracy as a share of the base model's (SemEval's 0.75)."
    )
    mia_floor: float | None = Field(None, ge=0, le=1, description="MIA score (1 = attack at chance).")
    held_out_retain_relative_floor: float | None = Field(
        0.9,
        ge=0,
        le=1,
        description="Held-out retain score (people in neither set: everyone else the model knows) as a share "
        "of the base model's: the collateral damage a candidate may do.",
    )
    quantization_recovery_ceiling: float | None = Field(
        0.10,
        ge=0,
        le=1,
        description="The largest share of the forgotten knowledge any quantization variant brings back "
        "(Zhang et al.: 4-bit brought back ~83% of it for most methods).",
    )
    relearning_recovery_ceiling: float | None = Field(
        0.25,
        ge=0,
        le=1,
        description="The largest share a relearning attack (fine-tuning on the other folds) brings back.",
    )
    per_request_floor: float | None = Field(
        0.3,
        ge=0,
        le=1,
        description="Each request's own forget score (that person's items alone): every request of this run, and "
        "every earlier one the run checks (a standing obligation, scored from its fingerprints). Per request, "
        "not on the mean: one person coming back fails the gate, and the reason names the request. Below "
        "forget_floor because one person is a few items (each moves it by 0.1-0.25); a person who came back "
        "scores what the original model does (about 0.03 on the demo).",
    )
    per_request_extraction_ceiling: float | None = Field(
        0.25,
        ge=0,
        le=1,
        description="Each request of this run: the share of that person's forget items that any of the evaluation's "
        "sampled generations reproduces (evaluate.extraction). Greedy decoding is what the official scorer reads; "
        "an attacker samples, and one person's answers surfacing under sampling fails the gate, naming the request.",
    )
    per_request_membership_ceiling: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Each request of this run: the membership percentile of that person's most member-like "
        "document among the non-members (1.0: a lower loss than every non-member). Off by default: with the few "
        "non-members most worlds have, one document's percentile moves in steps of 1/their number.",
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Further bounds on any figure by name (science.metrics.registry: a registered metric's, a score, "
        "set.task.figure, attack.<variant>.<figure>, recovery.<variant>.<figure>): a floor where higher is "
        "better, a ceiling where lower is.",
    )

    def unmeasured(self, evaluate: EvaluateConfig) -> str | None:
        """A floor the evaluation config gives no number for, as 'field: why' (None: all measurable).
        Caught when the config loads, not after two evaluations have run."""
        if evaluate.mmlu is None:
            for name in ("mmlu_floor", "mmlu_relative_floor"):
                if getattr(self, name) is not None:
                    return f"{name}: evaluate.mmlu is null, so there is no MMLU to compare (set {name}: null)"
        if not evaluate.mia and self.mia_floor is not None:
            return "mia_floor: evaluate.mia is off, so there is no MIA score (set mia_floor: null)"
        if not evaluate.mia and self.per_request_membership_ceiling is not None:
            return ("per_request_membership_ceiling: evaluate.mia is off, so no document is scored "
                    "(set per_request_membership_ceiling: null)")  # fmt: skip
        if evaluate.extraction is None and self.per_request_extraction_ceiling is not None:
            return ("per_request_extraction_ceiling: evaluate.extraction is off, so nothing is sampled "
                    "(set per_request_extraction_ceiling: null)")  # fmt: skip
        attacks = evaluate.attacks
        for name, attack in (("quantization", "quantization"), ("relearning", "relearning")):
            if getattr(self, f"{name}_recovery_ceiling") is not None and (
                attacks is None or getattr(attacks, attack) is None
            ):
                return (
                    f"{name}_recovery_ceiling: evaluate.attacks.{attack} is off, so there is no recovery to "
                    f"compare (set {name}_recovery_ceiling: null)"
                )
        return None

    @model_validator(mode="after")
    def _floors_in_range(self) -> GateConfig:
        from amnesia.science.metrics.registry import direction

        bad = {k: v for k, v in self.floors.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"floors must lie in [0, 1]: {bad}")
        for name in self.floors:
            if direction(name) in (None, "target"):
                why = "is best at a target, not higher or lower" if direction(name) else "is not a figure we report"
                raise ValueError(f"floors: {name!r} {why} (see amnesia.science.metrics.registry)")
        return self
