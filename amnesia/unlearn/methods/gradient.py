"""The gradient-ascent family: push the forget outputs' likelihood down, optionally keep retain up.

grad_ascent:  L = -NLL_forget
grad_diff:    L = gamma * (-NLL_forget) + alpha * R,  R = NLL_retain or KL(p_base || p) on retain
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amnesia.unlearn.config import MethodConfig
from amnesia.unlearn.data import Batch
from amnesia.unlearn.methods.base import LossOut, Method, StepInfo, nll, register, retain_term


class GradAscentConfig(MethodConfig):
    pass


@register("grad_ascent")
class GradAscent(Method):
    config_cls = GradAscentConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        return LossOut(-ce_f, {"forget_loss": float(ce_f.detach())})


class GradDiffConfig(MethodConfig):
    gamma: float = Field(1.0, ge=0, description="Weight of the forget term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the retain term.")
    retain_loss: Literal["nll", "kl"] = "nll"


@register("grad_diff")
class GradDiff(Method):
    config_cls = GradDiffConfig
    cfg: GradDiffConfig

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        return isinstance(cfg, GradDiffConfig) and cfg.retain_loss == "kl"

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        r = retain_term(self.cfg.retain_loss, self.model, self.reference, retain)
        total = -self.cfg.gamma * ce_f + self.cfg.alpha * r
        return LossOut(total, {"forget_loss": float(ce_f.detach()), "retain_loss": float(r.detach())})
