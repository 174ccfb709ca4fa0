"""UNDO (Lee et al., "Distillation Robustifies Unlearning", arXiv 2506.06278): unlearn, noise, distill.

    1. unlearn with an inner method (`inner`, default sha256) until the run's stop rule or budget;
       the weights it ends with are the teacher
    2. noise: theta = (1 - alpha) * theta_teacher + alpha * beta * N,  N ~ normal(0, init_std)
    3. distill: KL(p_teacher || p_student) on retain text (optionally forget text too), `distill_steps`

A model whose forgetting is only suppressed keeps the knowledge in its weights, and a few relearning
steps find it again; the authors show that a student distilled from the suppressed teacher's *outputs*,
starting from weights partly re-drawn, does not inherit the hidden knowledge, and that alpha trades
robustness against the compute distillation needs. Here only the trained tensors are noised (the
selected layers, or the adapters), and only matrices: norms and biases keep the teacher's values.

The teacher is not a second model: its trained tensors are kept and swapped in for a no-grad forward
pass per micro-batch (what SAM does for its perturbed weights), so the extra memory is one copy of the
trained tensors. The trainer runs the phases (`next_phase`); a checkpoint keeps the teacher
(`tensors`), so a run killed while distilling resumes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from amnesia.core.config import describe_error
from amnesia.science.unlearning.data import Batch, PairedBatches
from amnesia.science.unlearning.distributed import full, like, reshard, unwrap
from amnesia.science.unlearning.methods.base import LossOut, Method, Micro, StepInfo, logits_of, register, step_mean
from amnesia.science.unlearning.methods.config import MethodConfig
from amnesia.science.unlearning.methods.lookup import method_class

NAME = "undo"


def _inner_class(name: str) -> type[Method]:
    cls = method_class(name)
    if cls.name == NAME or cls.owns_update:
        raise ValueError(f"undo: inner must be a method that the optimizer steps, not {name!r}")
    return cls


class UndoConfig(MethodConfig):
    inner: str = Field("sha256", description="The unlearning phase's method (any registered one but undo, ngdiff).")
    inner_args: dict[str, Any] = Field(default_factory=dict, description="The inner method's config (validated).")
    alpha: float = Field(0.3, gt=0, lt=1, description="Share of each trained matrix re-drawn before distilling.")
    beta: float = Field(1.0, ge=0, description="Scale of the noise, in units of the model's initializer_range.")
    distill_steps: int = Field(100, ge=1, description="Optimizer steps of distillation.")
    distill_lr: float | None = Field(None, gt=0, le=1, description="Default: unlearn.lr.")
    temperature: float = Field(1.0, gt=0, description="Of both distributions in the KL.")
    distill_on: Literal["retain", "retain+forget"] = Field(
        "retain", description="retain+forget also matches the teacher's (unlearned) outputs on forget text."
    )
    seed: int = Field(0, ge=0, description="Of the noise.")

    @model_validator(mode="after")
    def _check_inner(self) -> UndoConfig:
        self.inner_config()
        return self

    def inner_config(self) -> MethodConfig:
        try:
            return _inner_class(self.inner).config_cls.model_validate(self.inner_args)
        except ValidationError as err:
            raise ValueError(describe_error(err, "inner_args").replace("inner_args: ", "inner_args.", 1)) from None


def masked_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) per real token (mask), averaged over them; both at `temperature`."""
    logp = torch.log_softmax(student.float() / temperature, dim=-1)
    ref = torch.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (ref.exp() * (ref - logp)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)


@register(NAME)
class Undo(Method):
    config_cls = UndoConfig
    search_space = {"alpha": (0.1, 0.7)}
    cfg: UndoConfig

    def __init__(self, cfg: MethodConfig, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter],
                 reference: torch.nn.Module | None = None, layers: Sequence[int] = ()) -> None:  # fmt: skip
        super().__init__(cfg, model, trainable, reference, layers)
        self.inner = _inner_class(self.cfg.inner)(self.cfg.inner_config(), model, trainable, reference, layers)
        self.phase = 0  # 0: the inner method unlearns; 1: the student distils
        self.teacher: list[torch.Tensor] = []  # the trained tensors at the end of phase 0, laid out as they are

    # ------------------------------------------------------------ what the inner method decides

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        assert isinstance(cfg, UndoConfig)
        return _inner_class(cfg.inner).wants_reference(cfg.inner_config())

    @classmethod
    def schedule(cls, cfg: MethodConfig, data: PairedBatches, epochs: int) -> PairedBatches:
        assert isinstance(cfg, UndoConfig)
        return _inner_class(cfg.inner).schedule(cfg.inner_config(), data, epochs)

    @classmethod
    def record_files(cls, cfg: MethodConfig) -> dict[str, str]:
        assert isinstance(cfg, UndoConfig)
        return _inner_class(cfg.inner).record_files(cfg.inner_config())

    def prepare(self, first: Micro) -> None:
        self.inner.prepare(first)

    def after_step(self, logs: dict[str, float], info: StepInfo) -> None:
        if self.phase == 0:
            self.inner.after_step(logs, info)

    def step_lr(self, lr: float) -> float:
        return (self.cfg.distill_lr or lr) if self.phase == 1 else lr

    # ------------------------------------------------------------ the phases

    def next_phase(self, step: int) -> int:
        """At the end of unlearning (the trainer has loaded the weights it keeps): those are the teacher;
        noise the student from them and distil for distill_steps."""
        if self.phase == 1:
            return 0
        self.teacher = [p.detach().clone() for p in self.trainable]
        self._noise()
        self.phase = 1
        return self.cfg.distill_steps

    @torch.no_grad()
    def _noise(self) -> None:
        config = getattr(unwrap(self.model), "config", None)
        std = float(getattr(config, "initializer_range", 0.02)) * self.cfg.beta
        gen = torch.Generator().manual_seed(self.cfg.seed)
        a = self.cfg.alpha
        reshard(self.model)  # the last evaluation's gathered weights are the teacher's
        for p in self.trainable:
            if p.dim() < 2:
                continue
            noise = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32) * std  # whole, then sharded
            p.mul_(1 - a).add_(like(p, noise.to(p.device, p.dtype)), alpha=a)

    def _swap(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        reshard(self.model)  # a no-grad pass leaves FSDP's gathered weights: the next pass must read these
        saved = [p.detach().clone() for p in self.trainable]
        with torch.no_grad():
            for p, t in zip(self.trainable, tensors, strict=True):
                p.copy_(t)
        return saved

    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        student = self._swap(self.teacher)
        try:
            with torch.no_grad():
                return logits_of(self.model, batch)
        finally:
            self._swap(student)

    def _distill(self, batch: Batch) -> torch.Tensor:
        teacher = self._teacher_logits(batch)
        return masked_kl(logits_of(self.model, batch), teacher, batch.attention_mask.bool(), self.cfg.temperature)

    def _distill_loss(self, forget: Batch, retain: Batch) -> LossOut:
        kl = self._distill(retain)
        logs = {"distill_loss": float(kl.detach())}
        if self.cfg.distill_on == "retain+forget":
            kl_f = self._distill(forget)
            logs["distill_forget_loss"] = float(kl_f.detach())
            kl = kl + kl_f
        return LossOut(kl, logs)

    # ------------------------------------------------------------ losses

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        return self.inner.loss(forget, retain, info) if self.phase == 0 else self._distill_loss(forget, retain)

    def backward(self, micro: Sequence[Micro], info: StepInfo) -> dict[str, float]:
        if self.phase == 0:
            return self.inner.backward(micro, info)
        logs: list[dict[str, float]] = []
        for mb in micro:
            out = self._distill_loss(mb.forget, mb.retain)
            (out.total * mb.scale).backward()
            logs.append(out.logs | {"loss": float(out.total.detach())})
        return step_mean(logs, micro)

    @torch.no_grad()
    def eval_loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        return self.inner.eval_loss(forget, retain, info) if self.phase == 0 else self._distill_loss(forget, retain)

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state["phase"])
        self.inner.load_state_dict(state["inner"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"teacher.{i}": full(t).cpu() for i, t in enumerate(self.teacher)}  # collective when sharded

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.teacher = [
            like(p, tensors[f"teacher.{i}"].to(p.device, p.dtype)) for i, p in enumerate(self.trainable)
        ] if tensors else []  # fmt: skip
