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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from amnesia.unlearn.config import MethodConfig
from amnesia.unlearn.data import Batch
from amnesia.unlearn.methods.base import LossOut, Method, StepInfo, nll, register

LossFn = Callable[[Batch, Batch], torch.Tensor]


def flat_grad(
    loss_fn: LossFn, params: Sequence[torch.nn.Parameter], micro: Sequence[tuple[Batch, Batch]]
) -> tuple[torch.Tensor, float]:
    """The gradient of the micro-batch mean of loss_fn, flattened over params; and the mean value."""
    total = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    value = 0.0
    for forget, retain in micro:
        loss = loss_fn(forget, retain) / len(micro)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total += torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).flatten().float()
                for g, p in zip(grads, params, strict=True)
            ]
        )
        value += float(loss.detach())
    return total, value


def assign(params: Sequence[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Write a flat vector into the params' .grad."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


class NGDiffConfig(MethodConfig):
    max_lr_factor: float = Field(10.0, gt=0, description="eta* is clipped to this × lr.")


@register("ngdiff")
class NGDiff(Method):
    config_cls = NGDiffConfig
    owns_update = True
    cfg: NGDiffConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f, ce_r = nll(self.model, forget), nll(self.model, retain)
        return LossOut(ce_r - ce_f, {"forget_loss": float(ce_f.detach()), "retain_loss": float(ce_r.detach())})

    def _objective(self, micro: Sequence[tuple[Batch, Batch]]) -> float:
        with torch.no_grad():
            return sum(float(nll(self.model, r) - nll(self.model, f)) for f, r in micro) / len(micro)

    def _shift(self, d: torch.Tensor, eta: float) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.trainable:
                n = p.numel()
                p.add_(d[offset : offset + n].view_as(p).to(p.dtype), alpha=-eta)
                offset += n

    def direction(self, micro: Sequence[tuple[Batch, Batch]]) -> tuple[torch.Tensor, float, float]:
        g_f, ce_f = flat_grad(lambda f, r: nll(self.model, f), self.trainable, micro)
        g_r, ce_r = flat_grad(lambda f, r: nll(self.model, r), self.trainable, micro)
        return g_r / g_r.norm().clamp(min=1e-12) - g_f / g_f.norm().clamp(min=1e-12), ce_f, ce_r

    def step_size(self, micro: Sequence[tuple[Batch, Batch]], d: torch.Tensor, l0: float, eta0: float) -> float:
        self._shift(d, eta0)  # theta - eta0 d
        minus = self._objective(micro)
        self._shift(d, -2 * eta0)  # theta + eta0 d
        plus = self._objective(micro)
        self._shift(d, eta0)  # back to theta
        g = (plus - minus) / (2 * eta0)
        h = (plus + minus - 2 * l0) / eta0**2
        eta = g / h if h > 0 else eta0
        return min(max(eta, 0.0), self.cfg.max_lr_factor * eta0)

    def backward(self, micro: Sequence[tuple[Batch, Batch]], info: StepInfo) -> dict[str, float]:
        d, ce_f, ce_r = self.direction(micro)
        eta = self.step_size(micro, d, ce_r - ce_f, info.lr)
        self._shift(d, eta)
        return {"forget_loss": ce_f, "retain_loss": ce_r, "loss": ce_r - ce_f, "eta": eta}


class BlurConfig(MethodConfig):
    gamma: float = Field(1.0, ge=0, description="Weight of the forget gradient.")


@register("blur")
class Blur(Method):
    config_cls = BlurConfig
    cfg: BlurConfig

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        ce_f, ce_r = nll(self.model, forget), nll(self.model, retain)
        total = -self.cfg.gamma * ce_f + ce_r
        return LossOut(total, {"forget_loss": float(ce_f.detach()), "retain_loss": float(ce_r.detach())})

    def direction(self, micro: Sequence[tuple[Batch, Batch]]) -> tuple[torch.Tensor, float, float]:
        g_f, f = flat_grad(lambda fb, rb: -nll(self.model, fb), self.trainable, micro)
        g_r, r = flat_grad(lambda fb, rb: nll(self.model, rb), self.trainable, micro)
        projected = g_r - (g_r @ g_f) / (g_f @ g_f).clamp(min=1e-24) * g_f
        return projected + self.cfg.gamma * g_f, -f, r

    def backward(self, micro: Sequence[tuple[Batch, Batch]], info: StepInfo) -> dict[str, float]:
        d, ce_f, ce_r = self.direction(micro)
        assign(self.trainable, d)
        return {"forget_loss": ce_f, "retain_loss": ce_r, "loss": -self.cfg.gamma * ce_f + ce_r}
