"""The attacks' configs (beside amnesia.science.attacks, which runs them; the evaluate stage's config holds one)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from amnesia.core.config import StrictModel


class QuantizationAttackConfig(StrictModel):
    """Re-score the forget set after round-to-nearest weight quantization of the linear layers."""

    bits: list[int] = Field([8, 4], min_length=1, description="One variant per bit width (2..8).")
    group_size: int = Field(128, ge=0, description="Input columns per quantization group (0: a whole row).")
    schemes: list[Literal["sym", "asym"]] = Field(["sym", "asym"], min_length=1)
    nf4: bool = Field(
        False,
        description="Also NF4 (bitsandbytes' 4-bit format, QLoRA's: blocks of 64, absmax, 16 normal-quantile "
        "levels), emulated in torch on any device: what most people run a 4-bit model with.",
    )

    @model_validator(mode="after")
    def _bits_in_range(self) -> QuantizationAttackConfig:
        if any(not 2 <= b <= 8 for b in self.bits):
            raise ValueError(f"bits must lie in 2..8: {self.bits}")
        return self

    def schemes_symmetric(self) -> list[bool]:
        return [s == "sym" for s in self.schemes]


class RelearningAttackConfig(StrictModel):
    """Fine-tune on k − 1 folds of the forget documents, score the held-out fold, rotate (RTT). The
    defaults are cheap (CI); an audit raises steps (e.g. 100-200) and uses the model's own lr."""

    folds: int = Field(5, ge=2, le=50)
    steps: int = Field(20, ge=1, description="AdamW steps per fold.")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    layers: list[int] | None = Field(
        None, description="Fine-tune only these layers (e.g. the unlearned ones); none: all."
    )
    prompt_format: Literal["raw", "chat"] = "raw"
    seed: int = Field(0, ge=0)


class AttackConfig(StrictModel):
    """Attacks on forgetting, run on every evaluated model's forget set; null turns one off."""

    quantization: QuantizationAttackConfig | None = QuantizationAttackConfig()
    relearning: RelearningAttackConfig | None = RelearningAttackConfig()
