"""Attacks on forgetting, run by the evaluation on each model it scores (base and candidate alike):

- quantization (Zhang et al., ICLR 2025): the forget set re-scored after round-to-nearest weight
  quantization of the linear layers, per (bits, scheme) variant;
- relearning (RTT, Deeb & Roger, arXiv 2410.08827): the forget set's documents (people) split into k
  folds; a copy of the model fine-tuned on k − 1 folds for a fixed budget, the held-out fold scored;
  rotated over the folds. Applied to the base model it is the ceiling: how much such a fine-tune adds
  to a model that never forgot.

Each returns per-item scores and, per metric (knowledge = QA exact match, regurgitation = SC ROUGE-L
recall, all = every item), the mean. The gate turns base and candidate figures into a recovery:
(candidate attacked − candidate) / (base − candidate), clipped to [0, 1].
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from amnesia.science.attack_config import AttackConfig, QuantizationAttackConfig, RelearningAttackConfig
from amnesia.science.records import UnlearningRecord

Scorer = Callable[[Any, Sequence[UnlearningRecord]], list[float]]
METRICS = ("knowledge", "regurgitation", "all")


def means(records: Sequence[UnlearningRecord], scores: Sequence[float]) -> dict[str, float]:
    """knowledge (QA), regurgitation (SC) and all: the mean item score of each (absent kinds left out)."""
    out = {}
    for metric, keep in (("knowledge", "qa"), ("regurgitation", "sc"), ("all", None)):
        values = [s for r, s in zip(records, scores, strict=True) if keep is None or r.kind == keep]
        if values:
            out[metric] = sum(values) / len(values)
    return out


NF4_VARIANT = "quant.nf4-b64"


def variant_name(bits: int, group_size: int, symmetric: bool) -> str:
    return f"quant.int{bits}-g{group_size}-{'sym' if symmetric else 'asym'}"


def quantization(
    cfg: QuantizationAttackConfig, model: Any, records: Sequence[UnlearningRecord], score: Scorer
) -> dict[str, list[float]]:
    """variant -> per-item scores of the quantized model."""
    from amnesia.science.quantize import nf4_copy, quantized_copy

    out = {}
    for bits in cfg.bits:
        for symmetric in cfg.schemes_symmetric():
            attacked = quantized_copy(model, bits, cfg.group_size, symmetric)
            out[variant_name(bits, cfg.group_size, symmetric)] = score(attacked, records)
            del attacked
    if cfg.nf4:
        attacked = nf4_copy(model)
        out[NF4_VARIANT] = score(attacked, records)
        del attacked
    return out


def folds(records: Sequence[UnlearningRecord], k: int, seed: int) -> list[list[UnlearningRecord]]:
    """The forget records in k seeded folds by document (a person's items stay together); with a single
    document, by record (Deeb & Roger split facts: the other facts of the same person). Fewer than two
    units: no folds."""
    by_doc = len({r.document_id for r in records}) >= 2
    unit = (lambda r: r.document_id) if by_doc else (lambda r: r.id)
    units = sorted({unit(r) for r in records}, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())
    if len(units) < 2:
        return []
    k = max(2, min(k, len(units)))
    fold_of = {u: i % k for i, u in enumerate(units)}
    out: list[list[UnlearningRecord]] = [[] for _ in range(k)]
    for r in records:
        out[fold_of[unit(r)]].append(r)
    return out


def finetune(
    model: Any, tokenizer: Any, records: Sequence[UnlearningRecord], cfg: RelearningAttackConfig, prompt_format: str
) -> Any:
    """A copy of the model fine-tuned on the records' outputs (cross-entropy on output tokens), `steps`
    AdamW steps of `batch_size` items drawn in a seeded order; only `layers`' parameters when set."""
    from amnesia.science.architecture import inspect_model
    from amnesia.science.unlearning.data import collate, encode
    from amnesia.science.unlearning.methods.base import nll

    tuned = copy.deepcopy(model).train()
    if cfg.layers is not None:
        layout = inspect_model(tuned)
        keep = {id(p) for i in cfg.layers for p in layout.layers[i].parameters()}
        for p in tuned.parameters():
            p.requires_grad_(id(p) in keep)
    else:
        for p in tuned.parameters():
            p.requires_grad_(True)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    encoded = [encode(tokenizer, r, prompt_format, eos=False) for r in records]
    rng = random.Random(cfg.seed)
    order: list[int] = []
    device = next(tuned.parameters()).device
    torch.manual_seed(cfg.seed)
    for _step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        take, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch = collate([encoded[i] for i in take], tokenizer.pad_token_id).to(device)
        opt.zero_grad(set_to_none=True)
        nll(tuned, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return tuned.eval()


def relearning(
    cfg: RelearningAttackConfig,
    model: Any,
    tokenizer: Any,
    records: Sequence[UnlearningRecord],
    score: Scorer,
    prompt_format: str = "raw",
) -> dict[str, float]:
    """id -> the item's score after fine-tuning on the other folds (each item is held out once)."""
    out: dict[str, float] = {}
    parts = folds(records, cfg.folds, cfg.seed)
    for i, held in enumerate(parts):
        if not held:
            continue
        train = [r for j, part in enumerate(parts) if j != i for r in part]
        tuned = finetune(model, tokenizer, train, cfg, prompt_format)
        out.update(zip((r.id for r in held), score(tuned, held), strict=True))
        del tuned
    return out


def run_attacks(
    cfg: AttackConfig, model: Any, tokenizer: Any, records: Sequence[UnlearningRecord], score: Scorer
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """(variant -> metric means, per-item rows) for every configured attack on this model's forget set."""
    figures: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    if cfg.quantization is not None:
        for variant, scores in quantization(cfg.quantization, model, records, score).items():
            figures[variant] = means(records, scores)
            rows += [{"attack": variant, "id": r.id, "score": s} for r, s in zip(records, scores, strict=True)]
    if cfg.relearning is not None:
        by_id = relearning(cfg.relearning, model, tokenizer, records, score, cfg.relearning.prompt_format)
        if not by_id:  # one forget record: nothing to fine-tune on, no RTT figure (the gate says unmeasured)
            return figures, rows
        scores = [by_id[r.id] for r in records]
        figures["rtt"] = means(records, scores)
        rows += [{"attack": "rtt", "id": r.id, "score": s} for r, s in zip(records, scores, strict=True)]
    return figures, rows
