"""What every unlearning method is: a small class that turns a forget and a retain batch into a loss
(or, for the gradient-surgery methods, into gradients), registered by name.

Most methods are separable: their loss is a forget part plus a retain part (`forget_part`,
`retain_part`), which is what lets a wrapper such as SAM treat the forget objective on its own. A
method may also reshape the run's batches (`schedule`: the chunked method) or read record files of
its own (`record_files`: LLM Surgery's update set), which reach it through `Micro.extra`.

The trainer owns everything else: which parameters train, batching, the optimizer, checkpoints.
A method keeps any state it needs across steps in `state_dict()`, so a resumed run continues it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from amnesia.science.unlearning.data import Batch, PairedBatches
from amnesia.science.unlearning.distributed import all_sum
from amnesia.science.unlearning.methods.config import MethodConfig


@dataclass
class StepInfo:
    step: int  # optimizer steps done before this one
    epoch: int  # 0-based; epoch 0 is the first pass over the forget set
    lr: float


@dataclass
class Micro:
    """One micro-batch of an optimizer step. `share` is its part of the step's mean (1/n for each of the
    step's n micro-batches, 0 for the zero-weight filler a process gets when the step has too few);
    `scale` multiplies its loss before backward: share × the number of processes, because DDP and FSDP
    average gradients over processes where the step wants their sum."""

    forget: Batch
    retain: Batch
    share: float = 1.0
    scale: float = 1.0
    extra: dict[str, Batch] = field(default_factory=dict)  # a method's own sets (record_files)


@dataclass
class LossOut:
    total: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method:
    """Subclasses set `name` and `config_cls` and override `loss` (or `backward`)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    needs_reference: ClassVar[bool] = False  # a frozen copy of the base model
    # What the settings search varies of the method's own config by default: field -> (low, high), sampled
    # log-uniformly (the trainer's lr is always searched too). The few knobs that trade forgetting against
    # keeping, not every field: a search of 10-20 trials can cover two or three dimensions.
    search_space: ClassVar[dict[str, tuple[float, float]]] = {}
    owns_update: ClassVar[bool] = False  # applies its own parameter update (no optimizer step)

    def __init__(
        self,
        cfg: MethodConfig,
        model: torch.nn.Module,
        trainable: Sequence[torch.nn.Parameter],
        reference: torch.nn.Module | None = None,
        layers: Sequence[int] = (),
    ) -> None:
        self.cfg, self.model, self.trainable, self.reference, self.layers = (
            cfg,
            model,
            list(trainable),
            reference,
            layers,
        )

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        return cls.needs_reference

    @classmethod
    def separable(cls) -> bool:
        """Whether the loss is forget_part + retain_part (the class overrides both)."""
        return cls.forget_part is not Method.forget_part and cls.retain_part is not Method.retain_part

    @classmethod
    def schedule(cls, cfg: MethodConfig, data: PairedBatches, epochs: int) -> PairedBatches:
        """The run's batches; a method that orders its data differently returns its own schedule."""
        return data

    @classmethod
    def record_files(cls, cfg: MethodConfig) -> dict[str, str]:
        """Record sets of the method's own (name -> path or s3:// URI); each micro-batch carries a batch
        of each, cycled like the retain set, in Micro.extra[name]."""
        return {}

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        raise NotImplementedError

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        """Gets the whole micro-batch: retain plus any sets of the method's own."""
        raise NotImplementedError

    def micro_loss(self, micro: Micro, info: StepInfo) -> LossOut:
        if not self.separable():
            return self.loss(micro.forget, micro.retain, info)
        f, r = self.forget_part(micro.forget, info), self.retain_part(micro, info)
        return LossOut(f.total + r.total, f.logs | r.logs)

    def loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        """The objective on a forget and a retain batch (separable methods: the sum of their parts)."""
        if not self.separable():
            raise NotImplementedError
        return self.micro_loss(Micro(forget, retain), info)

    def prepare(self, first: Micro) -> None:
        """Called once, before the first evaluation of a fresh run, with the run's first micro-batch (the
        same on every process): where a method fixes what it derives from data (RMU's coefficient)."""

    def backward(self, micro: Sequence[Micro], info: StepInfo) -> dict[str, float]:
        """Accumulate the gradient of the step's mean loss into .grad; the logs are step means."""
        logs: list[dict[str, float]] = []
        for mb in micro:
            out = self.micro_loss(mb, info)
            (out.total * mb.scale).backward()
            logs.append(out.logs | {"loss": float(out.total.detach())})
        return step_mean(logs, micro)

    def after_step(self, logs: dict[str, float], info: StepInfo) -> None:
        """Called once per optimizer step with the step's logs (e.g. to update an adaptive weight)."""

    @torch.no_grad()
    def eval_loss(self, forget: Batch, retain: Batch, info: StepInfo) -> LossOut:
        """The objective on held-out batches, no gradients."""
        return self.loss(forget, retain, info)

    def step_lr(self, lr: float) -> float:
        """The learning rate of this step, given the run's (a later phase may set its own)."""
        return lr

    def next_phase(self, step: int) -> int:
        """Called when the run would end (its stop rule met or its steps spent), with the weights it would
        keep loaded. A method with a later phase (UNDO's distillation) starts it here and returns its step
        budget; 0 ends the run. Later phases run their budget: the early stop is the unlearning's rule."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name} keeps no state, got {sorted(state)}")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Whole tensors of the method's own that a checkpoint keeps (collective on several processes)."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"method {self.name} keeps no tensors, got {sorted(tensors)[:3]}")


def step_mean(logs: Sequence[dict[str, float]], micro: Sequence[Micro]) -> dict[str, float]:
    """Each logged number's mean over the step's micro-batches, on every process alike (every
    micro-batch of a method logs the same keys, so the processes sum the same list)."""
    keys = sorted({k for d in logs for k in d})
    local = [sum(d.get(k, 0.0) * mb.share for d, mb in zip(logs, micro, strict=True)) for k in keys]
    return dict(zip(keys, all_sum(local), strict=True))


# ---------------------------------------------------------------- shared pieces of losses


def logits_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def token_logprobs(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each next label token, and the mask of the positions that count (output tokens)."""
    labels = batch.labels[:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the batch's output tokens (what `labels=` gives in transformers)."""
    logits = logits_of(model, batch)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), ignore_index=-100)


def sequence_logprob(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: sum of output-token log-probs, and the number of output tokens."""
    picked, mask = token_logprobs(logits_of(model, batch), batch)
    return picked.sum(-1), mask.sum(-1)


def kl_to_reference(model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """KL(p_reference || p_model) per output token, averaged over output tokens."""
    logp = torch.log_softmax(logits_of(model, batch)[:, :-1].float(), dim=-1)
    with torch.no_grad():
        ref_logp = torch.log_softmax(logits_of(reference, batch)[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    mask = batch.labels[:, 1:] != -100
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def retain_term(kind: str, model: torch.nn.Module, reference: torch.nn.Module | None, batch: Batch) -> torch.Tensor:
    if kind == "nll":
        return nll(model, batch)
    assert reference is not None, "kl needs the reference model"
    return kl_to_reference(model, reference, batch)


class ForgetRetainConfig(MethodConfig):
    """Methods of the form gamma * forget term + alpha * retain term."""

    gamma: float = Field(1.0, ge=0, description="Weight of the forget term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the retain term.")
    retain_loss: Literal["nll", "kl"] = Field("nll", description="kl: KL(p_base || p) on retain (needs the base).")


class ForgetRetainMethod(Method):
    """Subclasses give the forget term; the retain term and the weighting are shared."""

    cfg: ForgetRetainConfig
    search_space = {"alpha": (0.5, 20.0)}

    @classmethod
    def wants_reference(cls, cfg: MethodConfig) -> bool:
        return cls.needs_reference or (isinstance(cfg, ForgetRetainConfig) and cfg.retain_loss == "kl")

    def forget_term(self, forget: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forget_part(self, forget: Batch, info: StepInfo) -> LossOut:
        l_f = self.forget_term(forget)
        return LossOut(self.cfg.gamma * l_f, {"forget_loss": float(l_f.detach())})

    def retain_part(self, micro: Micro, info: StepInfo) -> LossOut:
        r = retain_term(self.cfg.retain_loss, self.model, self.reference, micro.retain)
        return LossOut(self.cfg.alpha * r, {"retain_loss": float(r.detach())})


# ---------------------------------------------------------------- registry

METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add
