"""Gradient surgery: methods that combine separate forget and retain gradients instead of summing losses.

ngdiff: d = g_R/|g_R| - g_F/|g_F|  (g = gradients of the cross-entropies); the step size comes from
        the objective L = CE_R - CE_F at theta - eta0*d and theta + eta0*d (a quadratic fit along d:
        eta* = G/H, G = (L+ - L-)/(2 eta0), H = (L+ + L- - 2 L0)/eta0^2), and theta <- theta - eta* d.
        eta0 is the configured lr; eta* is clipped to [0, max_lr_factor * eta0], and eta0 is used
        where the fit is not convex (H <= 0).
blur:   forget objective f = -CE_F (ascent), retain objective r = CE_R; the update direction is
        g_r - (<g_r, g_f>/|g_f|^2) g_f + gamma * g_f: the retain gradient with its component along
        the forget gradient removed (so keeping retain never undoes forgetting), plus the forget
        gradient. The optimizer (AdamW) then steps along it.

Both take their forget and retain gradients in separate backward passes, so on several processes each
is averaged over the processes (by DDP or FSDP, as it runs) before the two are normalised or projected:
the geometry is that of the whole batch, as on one process. Gradients stay per parameter (sharded ones
stay sharded); dot products and norms sum over the shards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.distributed import all_sum, full
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, nll, register
from amnesia.science.unlearning.methods.config import MethodConfig

LossFn = Callable[[Batch, Batch], torch.Tensor]
Grads = list[torch.Tensor]


def grads(loss_fn: LossFn, params: Sequence[torch.nn.Parameter], micro: Sequence[Micro]) -> tuple[Grads, float]:
    """The gradient of the step mean of loss_fn (fp32, one tensor per parameter, averaged over the
    processes), and that mean. .grad is left empty."""
    for p in params:
        p.grad = None
    value = 0.0
    for mb in micro:
        loss = loss_fn(mb.forget, mb.retain)
        (loss * mb.scale).backward()
        value += float(loss.detach()) * mb.share
    out = [p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32) for p in params]
    for p in params:
        p.grad = None
    return out, all_sum([value])[0]


def dot(a: Grads, b: Grads) -> float:
    return sum(float(full((x * y).sum())) for x, y in zip(a, b, strict=True))


def assign(params: Sequence[torch.nn.Parameter], direction: Grads) -> None:
    for p, d in zip(params, direction, strict=True):
        p.grad = d.to(p.dtype)


class NGDiffConfig(MethodConfig):
    max_lr_factor: float = Field(10.0, gt=0, description="eta* is clipped to this × lr.")


@register("ngdiff")
class NGDiff(Method):
    config_cls = NGDiffConfig
    search_space = {"max_lr_factor": (1.0, 100.0)}
    owns_update = True
    cfg: NGDiffConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f, ce_r = nll(self.model, forget), nll(self.model, retain)
        return LossOut(ce_r - ce_f, {"forget_loss": float(ce_f.detach()), "retain_loss": float(ce_r.detach())})

    def _objective(self, micro: Sequence[Micro]) -> float:
        with torch.no_grad():
            local = sum(float(nll(self.model, mb.retain) - nll(self.model, mb.forget)) * mb.share for mb in micro)
        return all_sum([local])[0]

    def _shift(self, d: Grads, eta: float) -> None:
        with torch.no_grad():
            for p, x in zip(self.trainable, d, strict=True):
                p.add_(x.to(p.dtype), alpha=-eta)

    def direction(self, micro: Sequence[Micro]) -> tuple[Grads, float, float]:
        g_f, ce_f = grads(lambda f, r: nll(self.model, f), self.trainable, micro)
        g_r, ce_r = grads(lambda f, r: nll(self.model, r), self.trainable, micro)
        n_f, n_r = max(math.sqrt(dot(g_f, g_f)), 1e-12), max(math.sqrt(dot(g_r, g_r)), 1e-12)
        return [r / n_r - f / n_f for f, r in zip(g_f, g_r, strict=True)], ce_f, ce_r

    def step_size(self, micro: Sequence[Micro], d: Grads, l0: float, eta0: float) -> float:
        self._shift(d, eta0)  # theta - eta0 d
        minus = self._objective(micro)
        self._shift(d, -2 * eta0)  # theta + eta0 d
        plus = self._objective(micro)
        self._shift(d, eta0)  # back to theta
        g = (plus - minus) / (2 * eta0)
        h = (plus + minus - 2 * l0) / eta0**2
        eta = g / h if h > 0 else eta0
        return min(max(eta, 0.0), self.cfg.max_lr_factor * eta0)

    def backward(self, micro: Sequence[Micro], info: StepInfo) -> dict[str, float]:
        d, ce_f, ce_r = self.direction(micro)
        eta = self.step_size(micro, d, ce_r - ce_f, info.lr)
        self._shift(d, eta)
        return {"forget_loss": ce_f, "retain_loss": ce_r, "loss": ce_r - ce_f, "eta": eta}


class BlurConfig(MethodConfig):
    gamma: float = Field(1.0, ge=0, description="Weight of the forget gradient.")


@register("blur")
class Blur(Method):
    config_cls = BlurConfig
    search_space = {"gamma": (0.05, 2.0)}
    cfg: BlurConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f, ce_r = nll(self.model, forget), nll(self.model, retain)
        total = -self.cfg.gamma * ce_f + ce_r
        return LossOut(total, {"forget_loss": float(ce_f.detach()), "retain_loss": float(ce_r.detach())})

    def direction(self, micro: Sequence[Micro]) -> tuple[Grads, float, float]:
        g_f, f = grads(lambda fb, rb: -nll(self.model, fb), self.trainable, micro)
        g_r, r = grads(lambda fb, rb: nll(self.model, rb), self.trainable, micro)
        c = dot(g_r, g_f) / max(dot(g_f, g_f), 1e-24)
        return [gr - c * gf + self.cfg.gamma * gf for gf, gr in zip(g_f, g_r, strict=True)], -f, r

    def backward(self, micro: Sequence[Micro], info: StepInfo) -> dict[str, float]:
        d, ce_f, ce_r = self.direction(micro)
        assign(self.trainable, d)
        return {"forget_loss": ce_f, "retain_loss": ce_r, "loss": -self.cfg.gamma * ce_f + ce_r}
