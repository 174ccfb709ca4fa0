"""Greedy generation from raw prompts (no chat template), batched with left padding and a KV cache."""

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
