"""Negative preference optimisation: gradient ascent whose push fades once an output is unlikely enough,
so it does not run away the way plain ascent does.

    npo:     L_F = -(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))
    simnpo:  L_F = -(2/beta) * mean log sigmoid(-(beta/|y|) * log p(y|x) - delta)   (no reference)
    L = gamma * L_F + alpha * R,   R = NLL_retain or KL(p_base || p) on retain
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import ForgetRetainConfig, ForgetRetainMethod, register, sequence_logprob


class NPOConfig(ForgetRetainConfig):
    beta: float = Field(0.1, gt=0)


@register("npo")
class NPO(ForgetRetainMethod):
    config_cls = NPOConfig
    needs_reference = True
    cfg: NPOConfig

    def forget_term(self, forget: Batch) -> torch.Tensor:
        assert self.reference is not None
        logp, _ = sequence_logprob(self.model, forget)
        with torch.no_grad():
            ref_logp, _ = sequence_logprob(self.reference, forget)
        return -(2 / self.cfg.beta) * F.logsigmoid(-self.cfg.beta * (logp - ref_logp)).mean()


class SimNPOConfig(ForgetRetainConfig):
    beta: float = Field(2.5, gt=0)
    delta: float = Field(0.0, description="Reward margin.")


@register("simnpo")
class SimNPO(ForgetRetainMethod):
    config_cls = SimNPOConfig
    cfg: SimNPOConfig

    def forget_term(self, forget: Batch) -> torch.Tensor:
        logp, length = sequence_logprob(self.model, forget)
        return -(2 / self.cfg.beta) * F.logsigmoid(-(self.cfg.beta / length) * logp - self.cfg.delta).mean()
