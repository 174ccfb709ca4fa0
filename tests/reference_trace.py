"""A plain causal-tracing reference: one restoration per forward pass, as in ROME's trace_with_patch.

Kept deliberately simple and separate from amnesia.science.tracing.causal, which must match it to 1e-5.
bench/trace.py times the two against each other.
"""

from __future__ import annotations

import numpy as np
import torch

from amnesia.science.architecture import Layout
from amnesia.science.tracing.causal import Fact


@torch.no_grad()
def reference_trace(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    kinds: tuple[str, ...],
    samples: int,
    noise_std: float,
    window: int,
    seed: int,
) -> tuple[float, dict[str, np.ndarray]]:
    s, e = fact.subject
    device = next(model.parameters()).device  # the reference runs where the model is (bench --device cuda)
    ids = torch.tensor([fact.ids], device=device)
    parts = {
        "hidden": lambda i: layout.layers[i],
        "mlp": lambda i: getattr(layout.layers[i], layout.mlp_name),
        "attn": lambda i: getattr(layout.layers[i], layout.attn_name),
    }

    clean: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for kind in ("hidden", "mlp", "attn"):
        for i in range(layout.num_layers):

            def keep(_m, _inp, out, key=(kind, i)):  # type: ignore[no-untyped-def]
                clean[key] = (out[0] if isinstance(out, tuple) else out)[0].clone()

            hooks.append(parts[kind](i).register_forward_hook(keep))
    model(input_ids=ids)
    for h in hooks:
        h.remove()

    gen = torch.Generator().manual_seed(seed)
    noise = (torch.randn(samples, e - s, clean[("hidden", 0)].shape[-1], generator=gen) * noise_std).to(device)

    def run(patches: list[tuple[str, int, int]]) -> float:
        def corrupt(_m, _inp, out):  # type: ignore[no-untyped-def]
            out = out.clone()
            out[:, s:e] += noise
            return out

        hs = [layout.embeddings.register_forward_hook(corrupt)]
        for kind, layer, token in patches:

            def patch(_m, _inp, out, key=(kind, layer), token=token):  # type: ignore[no-untyped-def]
                h = (out[0] if isinstance(out, tuple) else out).clone()
                h[:, token] = clean[key][token]
                return (h, *out[1:]) if isinstance(out, tuple) else h

            hs.append(parts[kind](layer).register_forward_hook(patch))
        logits = model(input_ids=ids.repeat(samples, 1)).logits[:, -1]
        for h in hs:
            h.remove()
        return torch.softmax(logits.float(), -1)[:, fact.target].mean().item()

    low = run([])
    scores = {}
    for kind in kinds:
        grid = np.zeros((len(fact.ids), layout.num_layers))
        for token in range(len(fact.ids)):
            for layer in range(layout.num_layers):
                if kind == "hidden":
                    window_layers = [layer]
                else:
                    window_layers = range(
                        max(0, layer - window // 2), min(layout.num_layers, layer + window - window // 2)
                    )
                grid[token, layer] = run([(kind, w, token) for w in window_layers])
        scores[kind] = grid
    return low, scores
