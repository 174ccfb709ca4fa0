"""SHA256 (SemEval-2025 Task 4): gradient ascent on the forget outputs held in check by a retain loss
whose weight grows when the retain loss drifts above where it started.

    L = -CE_forget + m * CE_retain
    m = clip(a * b**dL + c, m_min, m_max),  dL = CE_retain(now) - baseline

The baseline is the mean retain loss over the first epoch, during which m = m_min.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from amnesia.science.unlearning.data import Batch
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, nll, register
from amnesia.science.unlearning.methods.config import MethodConfig


class Sha256Config(MethodConfig):
    a: float = 0.3
    b: float = Field(6.0, gt=0)
    c: float = 0.8
    m_min: float = Field(1.2, ge=0)
    m_max: float = Field(2.8, ge=0)


@register("sha256")
class Sha256(Method):
    config_cls = Sha256Config
    search_space = {"m_min": (1.0, 10.0), "m_max": (2.0, 40.0)}  # an m_max below m_min holds m at m_max
    cfg: Sha256Config

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline: float | None = None
        self._sum, self._n = 0.0, 0

    def weight(self, retain_loss: float, info: StepInfo) -> float:
        if info.epoch == 0:
            return self.cfg.m_min
        if self.baseline is None:  # the first epoch has just ended
            self.baseline = self._sum / max(1, self._n)
        m = self.cfg.a * self.cfg.b ** (retain_loss - self.baseline) + self.cfg.c
        return min(max(m, self.cfg.m_min), self.cfg.m_max)

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        ce_f = nll(self.model, forget)
        return LossOut(-ce_f, {"forget_loss": float(ce_f.detach())})

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        ce_r = nll(self.model, micro.retain)
        m = self.weight(float(ce_r.detach()), info)
        return LossOut(m * ce_r, {"retain_loss": float(ce_r.detach()), "m": m})

    def after_step(self, logs: dict[str, float], info: StepInfo) -> None:
        if info.epoch == 0:
            self._sum += logs["retain_loss"]
            self._n += 1

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "sum": self._sum, "n": self._n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline, self._sum, self._n = state["baseline"], state["sum"], state["n"]
