"""Generation from raw prompts (no chat template), batched with left padding and a KV cache: greedy (what the
official scorer reads) and sampled (what an extraction attack draws)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


@torch.inference_mode()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 32,
    done: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Decoded continuations (special tokens dropped), stopping at EOS; order follows prompts. `done`
    hears how many prompts each batch finished (progress)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set one (e.g. the EOS token) before batching")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # continuations must start at the same column
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=True
            ).to(device)
            gen = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, batch["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            done(len(new))
    finally:
        tokenizer.padding_side = side
    return out


@torch.inference_mode()
def sampled_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    samples: int,
    temperature: float,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    done: Callable[[int], None] = lambda n: None,
) -> list[list[str]]:
    """`samples` continuations per prompt, sampled at `temperature` (top-k and top-p off: the whole distribution,
    which is what an extraction attack draws from). Seeded per batch, so the same inputs give the same samples."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set one (e.g. the EOS token) before batching")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    per = max(1, batch_size // samples)  # prompts per batch: batch_size sequences at a time
    out: list[list[str]] = []
    try:
        for start in range(0, len(prompts), per):
            chunk = list(prompts[start : start + per])
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=True).to(device)
            torch.manual_seed(seed + start)
            gen = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                num_return_sequences=samples, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            texts = tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(texts[i * samples : (i + 1) * samples] for i in range(len(chunk)))
            done(len(chunk))
    finally:
        tokenizer.padding_side = side
    return out
