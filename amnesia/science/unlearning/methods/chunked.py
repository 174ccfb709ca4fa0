"""Chunked unlearning (AILS-NTUA, SemEval-2025 Task 4's winner on the 1B model; arXiv 2503.02443): the
forget set split into disjoint chunks, unlearned one chunk after another, each forget batch merged with
cyclically sampled retain items at a fixed ratio, on the selected layers only.

    L = gamma * (-NLL_chunk) + alpha * R,   R = NLL_retain or KL(p_base || p) on retain
    retain items per micro-batch = retain_ratio x forget items (the forget batch size)

Each chunk gets every epoch (unlearn.epochs) before the next one starts: small chunks ask less of the
model at a time, which is what the authors credit for the forget/retain balance. Their LoRA variant is
this method with `unlearn.adapter` (adapters on the selected layers' modules).
"""

from __future__ import annotations

from pydantic import Field

from amnesia.science.unlearning.data import ChunkedBatches, DataError, PairedBatches
from amnesia.science.unlearning.methods.base import register
from amnesia.science.unlearning.methods.config import MethodConfig
from amnesia.science.unlearning.methods.gradient import GradDiff, GradDiffConfig


class ChunkedConfig(GradDiffConfig):
    chunks: int = Field(4, ge=1, description="Disjoint forget chunks, unlearned in turn (at most one per record).")
    retain_ratio: int = Field(2, ge=1, description="Retain items per forget item in a micro-batch.")


@register("chunked")
class Chunked(GradDiff):  # grad_diff's loss on a chunked schedule
    config_cls = ChunkedConfig
    cfg: ChunkedConfig

    @classmethod
    def schedule(cls, cfg: MethodConfig, data: PairedBatches, epochs: int) -> PairedBatches:
        assert isinstance(cfg, ChunkedConfig)
        if data.retain_size is not None:
            raise DataError("chunked: retain batch = method_args.retain_ratio x batch_size; unset retain_batch_size")
        return ChunkedBatches(
            data.forget, data.retain, data.batch_size, data.seed, data.pad_id,
            retain_size=cfg.retain_ratio * data.batch_size, extra=data.extra, chunks=cfg.chunks, epochs=epochs,
        )  # fmt: skip
