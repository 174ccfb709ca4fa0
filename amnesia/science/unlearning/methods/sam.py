"""Sharpness-aware unlearning (Fan et al., ICML 2025, arXiv 2502.05374) as a wrapper over any separable
method: the forget part is minimised at the worst weights within radius rho, the retain part where the
weights are.

    eps = rho * g_f / |g_f|,  g_f = grad of the forget part at theta
    step direction = grad forget_part(theta + eps) + grad retain_part(theta)

A forget objective that stays low in a whole neighbourhood has a flat minimum, which is what the
authors show a few relearning steps cannot climb out of. `sam+<method>` names the wrapped method
(sam+npo, sam+sha256); its config is the method's with `rho` added. A step costs three passes where
the method alone takes one. On several processes g_f is averaged over them before its norm is taken
(the `grads` of gradient surgery), so eps is that of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from pydantic import Field, create_model

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, step_mean
from amnesia.science.unlearning.methods.config import MethodConfig
from amnesia.science.unlearning.methods.gradient_surgery import dot, grads

PREFIX = "sam+"


class SAM(Method):
    """Subclasses (made by `sam_over`) set `inner_cls`; the wrapped method does all the loss work."""

    inner_cls: type[Method]

    def __init__(self, cfg: MethodConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.inner = self.inner_cls(cfg, *args, **kwargs)

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        return cls.inner_cls.wants_reference(cfg)

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        return self.inner.loss(forget, retain, info)  # the objective itself is the wrapped method's

    def _perturb(self, direction: Sequence[torch.Tensor], scale: float) -> list[torch.Tensor]:
        """Move to theta + scale * direction; returns theta, to put back exactly (x + e - e != x in floats)."""
        saved = [p.detach().clone() for p in self.trainable]
        with torch.no_grad():
            for p, d in zip(self.trainable, direction, strict=True):
                p.add_(d.to(p.dtype), alpha=scale)
        return saved

    def _restore(self, saved: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, x in zip(self.trainable, saved, strict=True):
                p.copy_(x)

    def backward(self, micro: Sequence[Micro], info: StepInfo) -> dict[str, float]:
        rho = float(self.cfg.rho)  # type: ignore[attr-defined]
        g_f, clean = grads(lambda f, r: self.inner.forget_part(f, info).total, self.trainable, micro)
        norm = math.sqrt(dot(g_f, g_f))
        scale = rho / max(norm, 1e-12)
        logs: list[dict[str, float]] = []
        theta = self._perturb(g_f, scale)  # at theta + eps, the forget part's gradients accumulate in .grad
        try:
            for mb in micro:
                f = self.inner.forget_part(mb.forget, info)
                (f.total * mb.scale).backward()
                logs.append(f.logs | {"forget_part": float(f.total.detach())})
        finally:
            self._restore(theta)
        for mb, row in zip(micro, logs, strict=True):
            r = self.inner.retain_part(mb, info)
            if r.total.requires_grad:
                (r.total * mb.scale).backward()
            row |= r.logs | {"loss": row["forget_part"] + float(r.total.detach())}
        return step_mean(logs, micro) | {"sam_grad_norm": norm, "forget_part_clean": clean}

    def prepare(self, first: Micro) -> None:
        self.inner.prepare(first)

    def after_step(self, logs: dict[str, float], info: StepInfo) -> None:
        self.inner.after_step(logs, info)

    def eval_loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        return self.inner.eval_loss(forget, retain, info)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


@cache
def sam_over(inner: type[Method]) -> type[Method]:
    """The SAM wrapper of a registered method (the same class each time it is asked for)."""
    if not inner.separable() or inner.owns_update or inner.backward is not Method.backward:
        raise ValueError(f"sam wraps methods whose loss is a forget part plus a retain part; {inner.name} is not one")
    config = create_model(
        f"Sam{inner.config_cls.__name__}",
        __base__=inner.config_cls,
        rho=(float, Field(0.01, gt=0, description="Radius of the worst-case weight perturbation of the forget part.")),
    )
    attrs = {"inner_cls": inner, "config_cls": config, "name": PREFIX + inner.name, "__doc__": SAM.__doc__,
             "search_space": inner.search_space}
    return type(f"Sam{inner.__name__}", (SAM,), attrs)
