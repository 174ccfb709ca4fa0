"""One model's evaluation: the official scorer's figures per set and task, MIA, MMLU, attacks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from amnesia.science.metrics.registry import legacy_figures
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.obligations import PersonScores
from amnesia.storage.uri import join

BUILT_IN = ("task_aggregate", "mia_auc", "mia_score", "mmlu", "mmlu_macro", "final")  # stored at the top level before


class Evaluation(BaseModel):
    role: str  # "base" or "candidate"
    model_uri: str
    model_digest: str | None
    placement: dict[str, str] = {}  # the resolved model section (device, dtype, ...) it was scored with
    uri: str  # the stored per-item results
    digest: str
    key: str | None  # cache key (None: the model has no digest, so nothing is cached)
    cached: bool
    forget: dict[str, dict[str, float]]  # task -> {regurgitation, knowledge}
    retain: dict[str, dict[str, float]]
    retain_held_out: dict[str, dict[str, float]]
    metrics: dict[str, float | None]  # every registered metric's figures (science.metrics.registry); None: not measured
    mmlu_subjects: dict[str, float]
    mmlu_questions: int
    mmlu_sampling: str
    mmlu_format: str = "letter"
    counts: dict[str, int]
    seconds: float
    attacks: dict[str, dict[str, float]] = {}  # variant -> forget metric means under that attack
    obligations: dict[str, PersonScores] = {}  # earlier request id -> the candidate's figures on its items
    requests: dict[str, PersonScores] = {}  # this run's request id -> the figures on that person's items
    drift: dict[str, float] = {}  # weight drift (relative L2) from "original" and from "previous_champion"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return legacy_figures(dict(data), BUILT_IN) if isinstance(data, dict) else data

    # The official scorer's figures by name (what the gate and the CLI read).
    @property
    def task_aggregate(self) -> float:
        return float(self.metrics["task_aggregate"])  # type: ignore[arg-type]

    @property
    def mia_auc(self) -> float | None:
        return self.metrics.get("mia_auc")

    @property
    def mia_score(self) -> float | None:
        return self.metrics.get("mia_score")

    @property
    def mmlu(self) -> float | None:
        return self.metrics.get("mmlu")

    @property
    def mmlu_macro(self) -> float | None:
        return self.metrics.get("mmlu_macro")

    @property
    def final(self) -> float | None:
        return self.metrics.get("final")

    @property
    def plain(self) -> dict[str, float]:
        """The forget metric means with no attack, on the items the attacks scored (the whole forget set)."""
        return self.attacks.get("none", {})

    def flat(self) -> dict[str, float]:
        """Every figure under one dotted name: the gate's and MLflow's view."""
        out: dict[str, float] = {}
        for group in ("forget", "retain", "retain_held_out"):
            for task, metrics in getattr(self, group).items():
                out.update({f"{group}.{task}.{m}": v for m, v in metrics.items()})
        out.update({k: v for k, v in self.metrics.items() if v is not None})
        for variant, metrics in self.attacks.items():
            out.update({f"attack.{variant}.{m}": v for m, v in metrics.items()})
        return out

    @classmethod
    def load(cls, store: ArtifactStore, uri: str) -> Evaluation:
        """A stored evaluation (a run's, or a cache entry), read back from its folder."""
        found = cls.model_validate_json(store.get_bytes(join(uri, L.RESULT)))
        return found.model_copy(update={"uri": uri, "digest": store.ref(uri).digest})
