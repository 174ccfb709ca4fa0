"""LLM Surgery (Veldanda et al. 2024, arXiv 2409.13054): three terms in one objective.

    L = -gamma_f * NLL_forget + gamma_u * NLL_update + gamma_r * KL(p_base || p) on retain

ascent on what must go, descent on an optional update set (corrected facts: what the model should say
instead), and a KL leash to the base model on retain. The update set is a records file of the LUME
schema (`update_records`: a path or s3:// URI); without one the method is the first and third terms.
(`ngdiff` and `blur`, in methods/surgery.py, are gradient surgery: a different idea with a similar name.)
"""

from __future__ import annotations

from pydantic import Field

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, kl_to_reference, nll, register
from amnesia.science.unlearning.methods.config import MethodConfig

UPDATE = "update"


class SurgeryConfig(MethodConfig):
    forget_weight: float = Field(1.0, ge=0, description="gamma_f: ascent on the forget outputs.")
    update_weight: float = Field(1.0, ge=0, description="gamma_u: descent on the update set.")
    retain_weight: float = Field(1.0, ge=0, description="gamma_r: KL to the base model on retain.")
    update_records: str | None = Field(None, description="Records to learn instead (path or s3:// URI, LUME JSONL).")


@register("surgery")
class Surgery(Method):
    config_cls = SurgeryConfig
    search_space = {"retain_weight": (0.5, 20.0)}
    needs_reference = True
    cfg: SurgeryConfig

    @classmethod
    def record_files(cls, cfg: MethodConfig) -> dict[str, str]:
        assert isinstance(cfg, SurgeryConfig)
        return {UPDATE: cfg.update_records} if cfg.update_records else {}

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        return LossOut(-self.cfg.forget_weight * ce_f, {"forget_loss": float(ce_f.detach())})

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        assert self.reference is not None
        kl = kl_to_reference(self.model, self.reference, micro.retain)
        total, logs = self.cfg.retain_weight * kl, {"retain_loss": float(kl.detach())}
        if UPDATE in micro.extra:  # held-out evaluation has no update batch: the objective without it
            ce_u = nll(self.model, micro.extra[UPDATE])
            total, logs = total + self.cfg.update_weight * ce_u, logs | {"update_loss": float(ce_u.detach())}
        return LossOut(total, logs)
