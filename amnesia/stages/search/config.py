"""The settings search's config (`unlearn.search` in a run config): how many trials, how long, over what.

A parameter is named as in the unlearn config: a training field (`lr`, `epochs`, …) or one of the method's own
(`method_args.<field>`). Without `space`, the search varies `lr` and the method's registered knobs
(`Method.search_space`), each log-uniform.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from amnesia.core.config import StrictModel

# The training fields a trial may vary: what changes the optimisation, not what is trained or how data is
# encoded (those are fixed for the search: every trial starts from the same model, layers and tokens).
TRAINING_FIELDS = {
    "lr": float, "weight_decay": float, "warmup_steps": int, "epochs": int, "max_steps": int, "batch_size": int,
    "retain_batch_size": int, "grad_accum": int, "max_grad_norm": float,
    # the stop rule: how much forgetting is enough is a trade against the held-out people, per run's data
    "early_stop_forget_exact": float, "early_stop_per_document": float,
}  # fmt: skip
DEFAULT_LR = (1e-5, 3e-3)  # SmolLM-size models want ~1e-5, the demo's 2M-parameter one ~1e-3


class ParamRange(StrictModel):
    """One searched parameter: a range (log-uniform by default; integers for integer fields), or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    choices: list[float | int | str | bool] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (a non-empty list) or low and high, not both")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("low < high are needed (or choices)")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0 (or log: false)")
        return self


class SearchConfig(StrictModel):
    """A budgeted search for the unlearning settings that pass the gate by the widest margin (Optuna TPE with a
    median pruner). Each trial unlearns from the same model and layers, is pruned early on its held-out curves,
    and is scored by the gate's own checks; the attacks run on the best `attack_top` only."""

    trials: int = Field(12, ge=1, le=500, description="Trials to run at most.")
    budget_s: float | None = Field(
        None, gt=0, description="Start no trial after this many seconds (the search then runs fewer trials).",
    )  # fmt: skip
    seed: int = Field(0, ge=0, description="The sampler's seed: the same seed and inputs give the same trials.")
    startup_trials: int | None = Field(
        None, ge=1, description="Trials drawn at random before TPE models the rest (default: a third, at least 3).",
    )  # fmt: skip
    prune: bool = Field(True, description="Stop a trial whose held-out curve is below the median of earlier ones.")
    attack_top: int = Field(2, ge=0, description="Run the attacks on this many best trials (0: no attack checks).")
    warm_start: bool = Field(True, description="Try the settings the start model was made with first.")
    space: dict[str, ParamRange] = Field(
        default_factory=dict, description="Parameter -> range; empty: lr and the method's registered knobs.",
    )  # fmt: skip

    def space_for(self, method_space: dict[str, tuple[float, float]]) -> dict[str, ParamRange]:
        if self.space:
            return dict(self.space)
        default = {"lr": ParamRange(low=DEFAULT_LR[0], high=DEFAULT_LR[1])}
        return default | {f"method_args.{k}": ParamRange(low=lo, high=hi) for k, (lo, hi) in method_space.items()}

    def startup(self) -> int:
        return self.startup_trials or max(3, self.trials // 3)


def check_space(space: dict[str, ParamRange], method_fields: dict[str, Any]) -> None:
    """Every searched name is a training field or a field of the method's config (ValueError naming it)."""
    for name in space:
        field = name.removeprefix("method_args.")
        if name.startswith("method_args."):
            if field not in method_fields:
                known = ", ".join(method_fields)
                raise ValueError(f"search.space: {name!r}: the method has no field {field!r} ({known})")
        elif name not in TRAINING_FIELDS:
            raise ValueError(f"search.space: {name!r} is not searchable (one of {', '.join(TRAINING_FIELDS)}, "
                             "or method_args.<field>)")  # fmt: skip
