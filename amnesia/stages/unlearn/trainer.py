"""The training loop every method shares: AdamW over the trainable parameters only, gradient
accumulation, a held-out evaluation every `eval_every` steps that keeps the best weights, an early
stop once the forget set is no longer reproduced, and checkpoints a killed run resumes from exactly. A
method may add phases after the unlearning (UNDO's distillation): each runs its own budget with a fresh
optimizer and keeps its own best weights.

On several processes (amnesia.science.unlearning.distributed) the loop is the same: each process takes its share
of a step's micro-batches, every process evaluates the same held-out batches (rank 0's numbers decide),
and checkpoints hold whole tensors, written by rank 0, so they resume on any number of processes.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from amnesia.core.progress import Progress
from amnesia.science.records import document_of
from amnesia.science.unlearning.data import Batch, Encoded, PairedBatches, chunks
from amnesia.science.unlearning.distributed import ONE, World, from_main, full, like, reshard, unwrap
from amnesia.science.unlearning.methods import Method, Micro, StepInfo
from amnesia.stages.unlearn.checkpoint import Checkpoint, CheckpointStore
from amnesia.stages.unlearn.config import UnlearnConfig

log = logging.getLogger("amnesia.stages.unlearn")


@dataclass
class TrainState:
    step: int = 0
    best_loss: float = math.inf
    best_step: int = -1
    best_met: bool = False  # the best evaluation met the forget target
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per optimizer step
    evals: list[dict[str, float]] = field(default_factory=list)  # one entry per evaluation
    stopped: str = ""
    resumed_from: int | None = None
    # A method with phases (UNDO: unlearn, then distil): the current one, how each ended, and the step and
    # micro-batch bounds of the current one when it is not the first (the first's come from the config).
    phase: int = 0
    phase_ends: list[dict[str, Any]] = field(default_factory=list)
    total_steps: int = 0
    micro_end: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class HeldOut:
    """What the evaluation looks at: held-out forget/retain batches (the trained forget set when no
    forget item is held out: by default every requested item is trained on) and the forget set whose
    reproduction decides the early stop."""

    forget: list[Batch]
    retain: list[Batch]
    forget_train: list[Batch]
    # The document of each forget_train item, in order (one person or document a request names): what the
    # per-document stop reads. Empty: that rule is off.
    forget_documents: list[str] = field(default_factory=list)


def lr_at(cfg: UnlearnConfig, step: int) -> float:
    """Linear warm-up, then constant: a pure function of the step, so there is no scheduler to checkpoint."""
    return cfg.lr * min(1.0, (step + 1) / (cfg.warmup_steps + 1))


@torch.no_grad()
def reproduced_items(model: torch.nn.Module, batches: Sequence[Batch]) -> list[bool]:
    """Per item, in order: is every output token the argmax given the gold prefix (exactly what greedy
    decoding would still return word for word)?"""
    flags: list[bool] = []
    for b in batches:
        pred = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].argmax(-1)
        labels = b.labels[:, 1:]
        flags += [bool(x) for x in ((pred == labels) | (labels == -100)).all(-1)]
    return flags


def share(flags: Sequence[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def reproduced(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    """Share of items greedy decoding would still return word for word."""
    return share(reproduced_items(model, batches))


def worst_document(flags: Sequence[bool], documents: Sequence[str]) -> float:
    """The largest share of one document's items still reproduced (0 without documents)."""
    per: dict[str, list[bool]] = {}
    for flag, doc in zip(flags, documents, strict=True):
        per.setdefault(doc, []).append(flag)
    return max((share(v) for v in per.values()), default=0.0)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(
        self,
        cfg: UnlearnConfig,
        method: Method,
        model: torch.nn.Module,
        names: Sequence[str],
        data: PairedBatches,
        held_out: HeldOut,
        checkpoints: CheckpointStore | None = None,
        on_checkpoint: Callable[[int, str], None] = lambda step, uri: None,
        on_record: Callable[[str, dict[str, float]], None] | None = None,
        world: World = ONE,
    ) -> None:
        """`model` is what forward passes call (a DDP wrapper on several processes); `names` are the
        trainable parameters' names in the unwrapped model."""
        self.cfg, self.method, self.model, self.data, self.held_out = cfg, method, model, data, held_out
        self.checkpoints, self.on_checkpoint, self.world = checkpoints, on_checkpoint, world
        # ("step", row) after every step, ("eval", result) after every evaluation (live curves)
        self.on_record = on_record or (lambda kind, row: None)
        named = dict(unwrap(model).named_parameters())
        self.names = list(names)
        self.params = [named[n] for n in self.names]
        self.device = next(unwrap(model).parameters()).device
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = TrainState()
        self.best: dict[str, torch.Tensor] = {}
        self.micro_end = data.batches_per_epoch * cfg.epochs  # the current phase's micro-batches end here
        self.total_steps = min(-(-self.micro_end // cfg.grad_accum), cfg.max_steps or math.inf)  # type: ignore[type-var]

    # ------------------------------------------------------------ pieces

    def _autocast(self) -> Any:
        bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def info(self, step: int) -> StepInfo:
        epoch = (step * self.cfg.grad_accum) // self.data.batches_per_epoch
        return StepInfo(step=step, epoch=epoch, lr=lr_at(self.cfg, step))

    def micro(self, step: int) -> list[Micro]:
        """This process's run of the step's micro-batches, topped up with zero-weight fillers so every
        process makes the same number of passes."""
        first = step * self.cfg.grad_accum
        n = min(first + self.cfg.grad_accum, self.micro_end) - first
        size = self.world.size
        per = -(-n // size)
        mine = range(first + self.world.rank * per, first + min((self.world.rank + 1) * per, n))
        out = [self._micro(i, 1 / n, size / n) for i in mine]
        return out + [self._micro(first, 0.0, 0.0) for _ in range(per - len(out))]

    def _micro(self, index: int, share: float, scale: float) -> Micro:
        forget, retain = self.data.micro_batch(index)
        extra = {k: b.to(self.device) for k, b in self.data.extra_batches(index).items()}
        return Micro(forget.to(self.device), retain.to(self.device), share, scale, extra)

    def train_step(self, step: int) -> dict[str, float]:
        info = self.info(step)
        info.lr = self.method.step_lr(info.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = info.lr
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logs = self.method.backward(self.micro(step), info)
        if not self.method.owns_update:
            if self.cfg.max_grad_norm is not None:
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
            self.optimizer.step()
        self.method.after_step(logs, info)
        return logs | {"lr": info.lr, "epoch": float(info.epoch)}

    def evaluate(self, step: int) -> dict[str, float]:
        self.model.eval()
        info = self.info(max(step - 1, 0))
        with self._autocast(), torch.no_grad():
            fs, rs = self.held_out.forget, self.held_out.retain
            pairs = [(fs[i % len(fs)], rs[i % len(rs)]) for i in range(max(len(fs), len(rs)))]
            outs = [self.method.eval_loss(f.to(self.device), r.to(self.device), info) for f, r in pairs]
            result = {
                "step": float(step),
                "eval_loss": sum(float(o.total) for o in outs) / max(1, len(outs)),
                "retain_exact": reproduced(self.model, [b.to(self.device) for b in self.held_out.retain]),
            }
            flags = reproduced_items(self.model, [b.to(self.device) for b in self.held_out.forget_train])
            result["forget_exact"] = share(flags)
            if self.held_out.forget_documents:
                result["forget_exact_worst_document"] = worst_document(flags, self.held_out.forget_documents)
        self.model.train()
        return from_main(result)  # one set of numbers decides best and stop on every process

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Whole trainable tensors on the CPU (gathered from the shards on several processes)."""
        return {n: full(p.detach()).cpu().clone() for n, p in zip(self.names, self.params, strict=True)}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        reshard(self.model)  # else a pass after an evaluation would read FSDP's gathered copy, not these
        with torch.no_grad():
            for n, p in zip(self.names, self.params, strict=True):
                p.copy_(like(p, tensors[n].to(p.device, p.dtype)))

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state with whole tensors: what a checkpoint keeps, whatever the world size."""
        state = self.optimizer.state_dict()
        state["state"] = {
            i: {k: full(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in slots.items()}
            for i, slots in state["state"].items()
        }
        return state

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        for i, slots in state["state"].items():  # moments laid out as their parameter (sharded or not)
            p = self.params[int(i)]
            for k, v in slots.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    slots[k] = like(p, v.to(p.device))
        self.optimizer.load_state_dict(state)

    # ------------------------------------------------------------ checkpoints

    def save(self) -> None:
        if self.checkpoints is None:
            return
        ckpt = Checkpoint(  # gathering is collective: every process builds it, rank 0 writes it
            step=self.state.step,
            trainable=self.snapshot(),
            best=self.best,
            optimizer=self.optimizer_state(),
            rng=rng_state(self.device),
            meta={"train": self.state.to_json(), "method": self.method.state_dict()},
            method=self.method.tensors(),
        )
        if self.world.main:
            uri = self.checkpoints.save(ckpt)
            self.on_checkpoint(self.state.step, uri)

    def resume(self) -> bool:
        if self.checkpoints is None or not self.cfg.resume:
            return False
        ckpt = self.checkpoints.latest()
        if ckpt is None:
            return False
        self.load_weights(ckpt.trainable)
        self.best = ckpt.best
        self.load_optimizer_state(ckpt.optimizer)
        set_rng_state(ckpt.rng, self.device)
        self.method.load_state_dict(ckpt.meta["method"])
        self.method.load_tensors(ckpt.method)
        self.state = TrainState(**ckpt.meta["train"])
        if self.state.phase:
            self.total_steps, self.micro_end = self.state.total_steps, self.state.micro_end
        self.state.resumed_from = ckpt.step
        log.info("unlearn: resumed from the checkpoint at step %d", ckpt.step)
        return True

    # ------------------------------------------------------------ the loop

    def train(self) -> TrainState:
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        if self.resume():  # the restored curves, so a resumed run's own record is whole
            for row in self.state.history:
                self.on_record("step", row)
            for row in self.state.evals:
                self.on_record("eval", row)
        else:
            self.method.prepare(self._micro(0, 1.0, 1.0))
            self.state.evals.append(self.evaluate(0))
            self.on_record("eval", self.state.evals[-1])
        self.model.train()
        while self._run_phase():  # each phase ends with the weights it keeps loaded
            pass
        return self.state

    def _run_phase(self) -> bool:
        """Train until the phase's stop rule or budget; True when the method starts another phase."""
        early = self.state.phase == 0 and self.cfg.early_stop_forget_exact is not None  # the count is then a cap
        label = "unlearning" if self.state.phase == 0 else f"{self.method.name} phase {self.state.phase + 1}"
        begun = self.state.phase_ends[-1]["step"] if self.state.phase_ends else 0
        bar = Progress(int(self.total_steps) - begun, label, "step", log, initial=self.state.step - begun, cap=early)
        while not self.state.stopped and self.state.step < self.total_steps:
            logs = self.train_step(self.state.step)
            self.state.step += 1
            self.state.history.append({"step": float(self.state.step)} | logs)
            self.on_record("step", self.state.history[-1])
            keys = ("forget_loss", "retain_loss", "m", "distill_loss", "eta")
            bar.update(1, {k: logs[k] for k in keys if k in logs})
            if self.state.step % self.cfg.eval_every == 0 or self.state.step == self.total_steps:
                self._after_eval(self.evaluate(self.state.step))
            if self.state.step % self.cfg.checkpoint_every == 0 and not self.state.stopped:
                self.save()
        bar.close()
        if not self.state.stopped:
            spent = self.state.phase == 0 and self.cfg.max_steps and self.state.step >= self.cfg.max_steps
            self.state.stopped = "max_steps" if spent else ("epochs" if self.state.phase == 0 else "phase_steps")
        return self._next_phase()

    def _next_phase(self) -> bool:
        """Hand the method the weights the phase keeps; if it starts another phase, that phase gets a fresh
        optimizer (the moments of another objective), its own budget, and its own best weights."""
        if self.cfg.keep == "best" and self.best:
            self.load_weights(self.best)
        end = {"phase": self.state.phase, "step": self.state.step, "stopped": self.state.stopped,
               "best_step": self.state.best_step}  # fmt: skip
        budget = self.method.next_phase(self.state.step)
        if not budget:
            return False
        self.state.phase_ends.append(end)
        self.state.phase += 1
        self.state.stopped, self.state.best_step, self.state.best_loss, self.state.best_met = "", -1, math.inf, False
        self.best = {}
        self.total_steps = self.state.total_steps = self.state.step + budget
        self.micro_end = self.state.micro_end = self.total_steps * self.cfg.grad_accum
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        log.info("unlearn: %s phase %d for %d steps from step %d", self.method.name, self.state.phase + 1, budget,
                 self.state.step)  # fmt: skip
        self._after_eval(self.evaluate(self.state.step))
        return True

    def _after_eval(self, result: dict[str, float]) -> None:
        """Best = the lowest held-out joint loss (as SHA256), but a checkpoint that meets the forget target
        always beats one that does not: a lower loss must not hand back a model that still remembers."""
        self.state.evals.append(result)
        self.on_record("eval", result)
        target, per_doc = self.cfg.early_stop_forget_exact, self.cfg.early_stop_per_document
        met = target is not None and result["forget_exact"] <= target
        if met and per_doc is not None and "forget_exact_worst_document" in result:
            met = result["forget_exact_worst_document"] <= per_doc  # every person, not only the average
        rank = (0 if met else 1, result["eval_loss"])
        if self.state.best_step < 0 or rank < (0 if self.state.best_met else 1, self.state.best_loss):
            self.state.best_loss, self.state.best_step, self.state.best_met = result["eval_loss"], self.state.step, met
            self.best = self.snapshot()
        if met and self.state.phase == 0:
            self.state.stopped = "forget_target_met"


def held_out_batches(
    forget_eval: list[Encoded], retain_eval: list[Encoded], forget_train: list[Encoded], size: int, pad: int
) -> HeldOut:
    return HeldOut(
        forget=chunks(forget_eval or forget_train, size, pad),
        retain=chunks(retain_eval, size, pad),
        forget_train=chunks(forget_train, size, pad),
        forget_documents=[document_of(e.id) for e in forget_train],
    )

