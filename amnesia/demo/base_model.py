"""The demo base model: a byte-level BPE tokenizer and a small OLMo trained from scratch until it
has memorised the demo world (QA exact match and sentence-completion ROUGE-L recall, greedy).

Training checks a cheap, exact proxy every epoch (every answer token is the argmax under teacher
forcing, which is what greedy decoding reproduces) and confirms with real generation at the end.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from amnesia.core.config import StrictModel
from amnesia.core.errors import AmnesiaError
from amnesia.demo.world import World
from amnesia.science.generation import greedy_generate
from amnesia.science.metrics.items import item_score
from amnesia.science.records import UnlearningRecord

PAD, EOS = "<|pad|>", "<|endoftext|>"


class TrainConfig(StrictModel):
    architecture: str = Field("olmo", pattern="^(olmo|olmo2)$")
    layers: int = Field(6, ge=2, le=48)
    hidden: int = Field(128, ge=32)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(512, ge=32)
    vocab_size: int = Field(2048, ge=300, le=65536)
    max_len: int = Field(160, ge=32, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(250, ge=1)
    seed: int = Field(0, ge=0)
    target_qa_em: float = Field(0.95, ge=0, le=1)
    target_sc_rouge: float = Field(0.9, ge=0, le=1)
    cpu_threads: int = Field(2, ge=1, description="Fixed, as model.cpu_threads: the weights depend on the count.")


class BuildError(AmnesiaError):
    """The base model did not reach its memorisation bars."""


@dataclass
class Memorisation:
    qa_em: float
    sc_rouge_l: float
    by_split: dict[str, dict[str, float]]
    epochs: int
    seconds: float


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.model_max_length = 4096
    return hf


def build_model(cfg: TrainConfig, tokenizer: Any) -> Any:
    from transformers import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

    config_cls, model_cls = (
        (OlmoConfig, OlmoForCausalLM) if cfg.architecture == "olmo" else (Olmo2Config, Olmo2ForCausalLM)
    )
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_len,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    return model_cls(config)


def _encode(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            raise BuildError(f"a training text has {len(ids)} tokens, above max_len {max_len}")
        out.append(ids)
    return out


def _batch(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


@torch.no_grad()
def _teacher_forced_exact(model: Any, tokenizer: Any, items: Sequence[UnlearningRecord]) -> float:
    """Share of items whose every output token (and the EOS) is the argmax: greedy would reproduce them."""
    model.eval()
    hits = 0
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        seqs, spans = [], []
        for r in chunk:
            prompt = tokenizer(r.input, add_special_tokens=False)["input_ids"]
            full = tokenizer(f"{r.input} {r.output}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            seqs.append(full)
            spans.append((len(prompt), len(full)))
        ids, mask, _ = _batch(seqs, tokenizer.pad_token_id)
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for i, (a, b) in enumerate(spans):
            hits += int(torch.equal(pred[i, a - 1 : b - 1], ids[i, a:b]))
    model.train()
    return hits / max(1, len(items))


def measure(
    model: Any, tokenizer: Any, items: Sequence[UnlearningRecord], max_new_tokens: int = 96
) -> dict[str, dict[str, float]]:
    """Greedy generation scored like the official scorer (QA exact match, SC ROUGE-L recall), per split
    and over all items, from one generation pass."""
    model.eval()
    gens = greedy_generate(model, tokenizer, [r.input for r in items], max_new_tokens=max_new_tokens)
    groups: dict[str, dict[str, list[float]]] = {}
    for g, r in zip(gens, items, strict=True):
        for key in (r.split or "none", "all"):
            groups.setdefault(key, {"qa": [], "sc": []})[r.kind].append(item_score(r.kind, g, r.output))
    return {
        k: {"qa_em": sum(v["qa"]) / max(1, len(v["qa"])), "sc_rouge_l": sum(v["sc"]) / max(1, len(v["sc"]))}
        for k, v in groups.items()
    }


def train_base_model(
    world: World, cfg: TrainConfig, out_dir: Path, log: Callable[[str], None] = lambda _: None
) -> Memorisation:
    """Train tokenizer + model on the world's training texts until memorised, save to out_dir."""
    t0 = time.monotonic()
    torch.set_num_threads(cfg.cpu_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    texts = world.training_texts()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    data = _encode(tokenizer, texts, cfg.max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (2 * steps_per_epoch)))
    rng = random.Random(cfg.seed)
    model.train()
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        loss_sum = 0.0
        # Randomly mixed batches: grouping by length cut padding but slowed convergence ~6x here.
        order = list(range(len(data)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            ids, mask, labels = _batch([data[i] for i in order[start : start + cfg.batch_size]], tokenizer.pad_token_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.item()
        if epoch % 5 == 0 or epoch == cfg.max_epochs:
            exact = _teacher_forced_exact(model, tokenizer, world.corpus)
            log(
                f"epoch {epoch}/{cfg.max_epochs} ({epoch * steps_per_epoch}/{total} steps): "
                f"loss {loss_sum / steps_per_epoch:.4f}, items reproduced exactly {exact:.1%}"
            )
            if exact >= 0.995:
                break

    scores = measure(model, tokenizer, world.corpus)
    overall = scores.pop("all")
    by_split = scores
    mem = Memorisation(overall["qa_em"], overall["sc_rouge_l"], by_split, epoch, time.monotonic() - t0)
    if mem.qa_em < cfg.target_qa_em or mem.sc_rouge_l < cfg.target_sc_rouge:
        raise BuildError(
            f"base model did not memorise the world after {epoch} epochs: QA exact match "
            f"{mem.qa_em:.3f} (needs {cfg.target_qa_em}), SC ROUGE-L recall {mem.sc_rouge_l:.3f} "
            f"(needs {cfg.target_sc_rouge}); raise train.max_epochs or the model size"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "amnesia_build.json").write_text(
        json.dumps(
            {
                "train": cfg.model_dump(),
                "world": world.config.model_dump(),
                "memorisation": {
                    "qa_em": mem.qa_em,
                    "sc_rouge_l": mem.sc_rouge_l,
                    "by_split": by_split,
                    "epochs": epoch,  # no wall time: the folder's digest follows its inputs only
                },
            },
            indent=1,
            sort_keys=True,
        )
    )
    return mem
