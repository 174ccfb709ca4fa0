"""RMU (representation misdirection, Li et al. 2024): scramble one layer's activations on forget text
and hold them in place on retain text.

    L = mean_forget ||h(x_f) - c*u||^2 + alpha * mean_retain ||h(x_r) - h_base(x_r)||^2

h is the output of decoder layer `layer` (default: the last trained layer), u a fixed random unit
vector (uniform entries, normalised, from `seed`), c the steering coefficient. Means run over the
real (unpadded) tokens' elements, as torch's mse_loss does. c defaults to `coef_scale` times the base
model's mean activation norm on the first forget batch: models differ wildly in activation scale, and
the paper's fixed c (6.5 for Zephyr-7B) does not transfer.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, register
from amnesia.science.unlearning.methods.config import MethodConfig


class RMUConfig(MethodConfig):
    layer: int | None = Field(None, ge=0, description="Default: the last trained layer.")
    steering_coef: float | None = Field(None, gt=0, description="c; default coef_scale × mean activation norm.")
    coef_scale: float = Field(4.0, gt=0)
    alpha: float = Field(100.0, ge=0)
    seed: int = Field(0, ge=0)


def hidden_at(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    return out.hidden_states[layer + 1].float()  # [0] is the embeddings


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (((h - target) ** 2) * m).sum() / (m.sum() * h.shape[-1]).clamp(min=1)


@register("rmu")
class RMU(Method):
    config_cls = RMUConfig
    search_space = {"alpha": (10.0, 1000.0), "coef_scale": (1.0, 20.0)}
    needs_reference = True
    cfg: RMUConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.layer is not None:
            self.layer = self.cfg.layer
        elif self.layers:
            self.layer = max(self.layers)
        else:
            raise ValueError("rmu: no layer to steer (set method_args.layer)")
        assert self.reference is not None
        hidden = int(self.reference.get_input_embeddings().weight.shape[1])  # the model may be wrapped (DDP)
        u = torch.rand(hidden, generator=torch.Generator().manual_seed(self.cfg.seed))
        self.u = u / u.norm()
        self.coef: float | None = self.cfg.steering_coef

    def prepare(self, first: Micro) -> None:
        self._coef(first.forget)  # the run's first forget batch on every process, not each one's own

    def _coef(self, forget: Batch) -> float:
        if self.coef is None:
            assert self.reference is not None
            with torch.no_grad():
                h = hidden_at(self.reference, forget, self.layer)
            norms = h.norm(dim=-1)[forget.attention_mask.bool()]
            self.coef = self.cfg.coef_scale * float(norms.mean())
        return self.coef

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        target = self._coef(forget) * self.u.to(forget.input_ids.device)
        l_f = masked_mse(hidden_at(self.model, forget, self.layer), target, forget.attention_mask)
        return LossOut(l_f, {"forget_loss": float(l_f.detach())})

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        assert self.reference is not None
        retain = micro.retain
        with torch.no_grad():
            frozen = hidden_at(self.reference, retain, self.layer)
        l_r = masked_mse(hidden_at(self.model, retain, self.layer), frozen, retain.attention_mask)
        return LossOut(self.cfg.alpha * l_r, {"retain_loss": float(l_r.detach())})

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = state["coef"]
