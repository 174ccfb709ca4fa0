"""Stage 4's config: what is scored, on which sets, with which attacks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amnesia.core.config import StrictModel
from amnesia.science.attack_config import AttackConfig


class MMLUConfig(StrictModel):
    """The utility benchmark: MMLU (cais/mmlu layout) or any set in its columns."""

    uri: str = Field("cais/mmlu", description="Hub id (online), local folder or s3:// folder.")
    split: str = "test"
    dev_split: str = Field("dev", description="Where the k shots come from (the first k of the subject).")
    shots: int = Field(5, ge=0, le=10)
    format: Literal["letter", "cloze"] = Field(
        "letter",
        description="letter: argmax over ' A'..' D' after 'Answer:' (the standard harness); cloze: the "
        "log-likelihood of each choice's own text per character (what small models can show signal on).",
    )
    subjects: list[str] | None = None
    per_subject: int | None = Field(None, ge=1, description="Sample this many questions per subject (seeded).")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1)


class ExtractionConfig(StrictModel):
    """Per person: sample each forget prompt this many times and count the items any sample reproduces."""

    samples: int = Field(8, ge=1, le=256, description="Samples per forget prompt.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature (top-k and top-p off).")
    seed: int = Field(0, ge=0)


class EvaluateConfig(StrictModel):
    """Stage 4: the official scorer's metrics on a model; the base model's results are cached."""

    max_new_tokens: int = Field(256, ge=1, le=4096)
    batch_size: int = Field(32, ge=1)
    mia: bool = Field(True, description="Membership inference on the split's MIA sets.")
    mmlu: MMLUConfig | None = Field(MMLUConfig(), description="None: no utility benchmark (no final score).")
    cache: bool = Field(True, description="Reuse a stored result for the same model, data and config.")
    extraction: ExtractionConfig | None = Field(
        ExtractionConfig(),
        description="Per-person extraction test on the forget prompts (sampled generations; null: none).",
    )
    attacks: AttackConfig | None = Field(
        AttackConfig(), description="Quantization and relearning attacks on the forget set (null: none)."
    )
