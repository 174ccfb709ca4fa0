"""The gradient-ascent family: push the forget outputs' likelihood down, optionally keep retain up.

grad_ascent:  L = -NLL_forget
grad_diff:    L = gamma * (-NLL_forget) + alpha * R,  R = NLL_retain or KL(p_base || p) on retain
"""

from __future__ import annotations

import torch

from amnesia.unlearn.config import MethodConfig
from amnesia.unlearn.data import Batch
from amnesia.unlearn.methods.base import (
    ForgetRetainConfig,
    ForgetRetainMethod,
    LossOut,
    Method,
    StepInfo,
    nll,
    register,
)


class GradAscentConfig(MethodConfig):
    pass


@register("grad_ascent")
class GradAscent(Method):
    config_cls = GradAscentConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        return LossOut(-ce_f, {"forget_loss": float(ce_f.detach())})


class GradDiffConfig(ForgetRetainConfig):
    pass


@register("grad_diff")
class GradDiff(ForgetRetainMethod):
    config_cls = GradDiffConfig

    def forget_term(self, forget: Batch) -> torch.Tensor:
        return -nll(self.model, forget)

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        out = super().loss(forget, retain, info)
        out.logs["forget_loss"] = -out.logs["forget_loss"]  # report the forget NLL itself, not its negative
        return out
