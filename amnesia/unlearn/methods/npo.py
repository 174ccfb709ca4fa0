"""Negative preference optimisation: gradient ascent whose push fades once an output is unlikely enough,
so it does not run away the way plain ascent does.

    npo:     L_F = -(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))
    simnpo:  L_F = -(2/beta) * mean log sigmoid(-(beta/|y|) * log p(y|x) - delta)   (no reference)
    L = gamma * L_F + alpha * R,   R = NLL_retain or KL(p_base || p) on retain
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from amnesia.unlearn.config import MethodConfig
from amnesia.unlearn.data import Batch
from amnesia.unlearn.methods.base import LossOut, Method, StepInfo, register, retain_term, sequence_logprob


class NPOConfig(MethodConfig):
    beta: float = Field(0.1, gt=0)
    gamma: float = Field(1.0, ge=0, description="Weight of the forget term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the retain term.")
    retain_loss: Literal["nll", "kl"] = "nll"


@register("npo")
class NPO(Method):
    config_cls = NPOConfig
    needs_reference = True
    cfg: NPOConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        assert self.reference is not None
        logp, _ = sequence_logprob(self.model, forget)
        with torch.no_grad():
            ref_logp, _ = sequence_logprob(self.reference, forget)
        l_f = -(2 / self.cfg.beta) * F.logsigmoid(-self.cfg.beta * (logp - ref_logp)).mean()
        r = retain_term(self.cfg.retain_loss, self.model, self.reference, retain)
        total = self.cfg.gamma * l_f + self.cfg.alpha * r
        return LossOut(total, {"forget_loss": float(l_f.detach()), "retain_loss": float(r.detach())})


class SimNPOConfig(MethodConfig):
    beta: float = Field(2.5, gt=0)
    delta: float = Field(0.0, description="Reward margin.")
    gamma: float = Field(1.0, ge=0, description="Weight of the forget term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the retain term.")
    retain_loss: Literal["nll", "kl"] = "nll"


@register("simnpo")
class SimNPO(Method):
    config_cls = SimNPOConfig
    cfg: SimNPOConfig

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        return isinstance(cfg, SimNPOConfig) and cfg.retain_loss == "kl"

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        logp, length = sequence_logprob(self.model, forget)
        l_f = -(2 / self.cfg.beta) * F.logsigmoid(-(self.cfg.beta / length) * logp - self.cfg.delta).mean()
        r = retain_term(self.cfg.retain_loss, self.model, self.reference, retain)
        total = self.cfg.gamma * l_f + self.cfg.alpha * r
        return LossOut(total, {"forget_loss": float(l_f.detach()), "retain_loss": float(r.detach())})
