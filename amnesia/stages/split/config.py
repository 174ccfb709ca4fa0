"""Stage 1's config: where the records and requests come from, and how the sets are cut."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from amnesia.core.config import StrictModel


class SplitConfig(StrictModel):
    """Stage 1. Either `corpus` + `requests` (erasure requests resolved against the training corpus)
    or `forget` + `retain` (the SemEval setup: ready files, no requests)."""

    corpus: str | None = Field(None, description="All trained records (path, s3:// URI or hub id).")
    requests: str | None = Field(None, description="A requests file (JSONL/YAML), or 'queue' for the pending queue.")
    forget: str | None = None
    retain: str | None = None
    mia_members: str | None = Field(None, description="MIA documents; those of forget documents are kept.")
    mia_nonmembers: str | None = Field(
        None, description="Never-trained MIA documents; default: corpus records whose split is 'holdout'."
    )
    forget_eval_fraction: float = Field(0.0, ge=0, lt=1, description="0: every forget document is trained on.")
    retain_eval_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    subject_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A document is a subject's own when the subject appears in at least this share of its records.",
    )
    retain_mentions: Literal["refuse", "move"] = "refuse"
    unmatched_requests: Literal["refuse", "warn"] = "refuse"

    @model_validator(mode="after")
    def _one_mode(self) -> SplitConfig:
        request_mode = self.corpus is not None or self.requests is not None
        semeval_mode = self.forget is not None or self.retain is not None
        if request_mode == semeval_mode:
            raise ValueError("give either corpus + requests, or forget + retain")
        if request_mode and (self.corpus is None or self.requests is None):
            raise ValueError("request mode needs both corpus and requests")
        if semeval_mode and (self.forget is None or self.retain is None):
            raise ValueError("the SemEval setup needs both forget and retain")
        return self
