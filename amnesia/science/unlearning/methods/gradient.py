"""The gradient-ascent family: push the forget outputs' likelihood down, optionally keep retain up.

grad_ascent:  L = -NLL_forget
grad_diff:    L = gamma * (-NLL_forget) + alpha * R,  R = NLL_retain or KL(p_base || p) on retain
"""

from __future__ import annotations

import torch

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import (
    ForgetRetainConfig,
    ForgetRetainMethod,
    LossOut,
    Method,
    Micro,
    StepInfo,
    nll,
    register,
)
from amnesia.science.unlearning.methods.config import MethodConfig


class GradAscentConfig(MethodConfig):
    pass


@register("grad_ascent")
class GradAscent(Method):
    config_cls = GradAscentConfig

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        return LossOut(-ce_f, {"forget_loss": float(ce_f.detach())})

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        return LossOut(torch.zeros((), device=micro.retain.input_ids.device))  # no retain term


class GradDiffConfig(ForgetRetainConfig):
    pass


@register("grad_diff")
class GradDiff(ForgetRetainMethod):
    config_cls = GradDiffConfig

    def forget_term(self, forget: Batch) -> torch.Tensor:
        return -nll(self.model, forget)

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        out = super().forget_part(forget, info)
        out.logs["forget_loss"] = -out.logs["forget_loss"]  # report the forget NLL itself, not its negative
        return out
