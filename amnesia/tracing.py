"""Causal tracing (Meng et al., 2022, "ROME"; as used by the SHA256 SemEval-2025 system): the core.

For a fact (prompt, subject token span, expected next token): run the prompt clean and keep every
layer's states; corrupt the subject tokens' embeddings with Gaussian noise (std = multiplier × the
empirical std of subject embeddings) in `samples` copies; then restore the clean state at one
(token, layer) and measure p(expected token) averaged over the copies. Kinds: the whole hidden state
(window 1), the MLP output and the attention output (a window of layers centred on the layer).

Fast path: many restorations share one batched forward, each row group patched by hooks from the
clean run's cached states. The plain one-restoration-per-forward reference lives in the tests.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from amnesia.arch import Kind, Layout

KINDS: tuple[Kind, ...] = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class Fact:
    id: str
    ids: tuple[int, ...]  # prompt token ids
    subject: tuple[int, int]  # token span [start, end)
    target: int  # expected next-token id


@dataclass
class FactTrace:
    fact: Fact
    clean: float  # p(target) on the clean prompt
    corrupted: float  # p(target) with the subject corrupted and nothing restored
    scores: dict[str, np.ndarray]  # kind -> [tokens, layers] p(target) after restoring

    def effect(self, kind: str) -> np.ndarray:
        """Indirect effect: restored minus fully corrupted."""
        return self.scores[kind] - self.corrupted


def layer_window(layer: int, kind: Kind, num_layers: int, window: int) -> list[int]:
    """The layers restored for (layer, kind): just it for hidden states; a window centred on it otherwise."""
    if kind == "hidden":
        return [layer]
    return list(range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2))))


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index, return-value]


def _replace_first(output: object, tensor: torch.Tensor) -> object:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def subject_noise(fact: Fact, hidden: int, samples: int, std: float, seed: int) -> torch.Tensor:
    """The fixed noise for one fact: the same draws for every restoration (and for the reference)."""
    gen = torch.Generator().manual_seed(seed)
    span = fact.subject[1] - fact.subject[0]
    return torch.randn(samples, span, hidden, generator=gen) * std


@torch.no_grad()
def clean_run(model: torch.nn.Module, layout: Layout, fact: Fact) -> tuple[dict[str, list[torch.Tensor]], float]:
    """Every layer's clean states (kind -> per layer [tokens, hidden]) and the clean p(target)."""
    states: dict[str, list[torch.Tensor]] = {k: [None] * layout.num_layers for k in KINDS}  # type: ignore[list-item]
    hooks = []
    for kind in KINDS:
        for i in range(layout.num_layers):

            def keep(_m: object, _i: object, out: object, kind: str = kind, i: int = i) -> None:
                states[kind][i] = _first(out)[0].detach().clone()

            hooks.append(layout.module(kind, i).register_forward_hook(keep))
    try:
        logits = model(input_ids=torch.tensor([fact.ids])).logits
    finally:
        for h in hooks:
            h.remove()
    return states, torch.softmax(logits[0, -1].float(), -1)[fact.target].item()


@dataclass(frozen=True)
class Restoration:
    kind: Kind | None  # None: nothing restored (the fully corrupted baseline)
    token: int
    layer: int


@torch.no_grad()
def trace_fact(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    kinds: tuple[Kind, ...] = KINDS,
    samples: int = 10,
    noise_std: float = 0.1,
    window: int = 10,
    seed: int = 0,
    max_rows: int = 2048,
) -> FactTrace:
    """Every (token, layer) restoration of every kind for one fact, batched."""
    states, clean = clean_run(model, layout, fact)
    tokens, layers = len(fact.ids), layout.num_layers
    # Before the subject, clean and corrupted states are equal (the noise has not reached them under a
    # causal mask): restoring there is exactly the corrupted run, so those rows are not computed.
    first = fact.subject[0]
    todo = [Restoration(None, 0, 0)] + [
        Restoration(k, t, layer) for k in kinds for t in range(first, tokens) for layer in range(layers)
    ]
    noise = subject_noise(fact, states["hidden"][0].shape[-1], samples, noise_std, seed)
    per_chunk = max(1, max_rows // samples)
    probs: list[torch.Tensor] = []
    for start in range(0, len(todo), per_chunk):
        probs.append(_patched_forward(model, layout, fact, todo[start : start + per_chunk], states, noise, window))
    p = torch.cat(probs).view(len(todo), samples).mean(1).numpy()
    scores = {k: np.full((tokens, layers), float(p[0])) for k in kinds}
    for r, value in zip(todo[1:], p[1:], strict=True):
        scores[r.kind][r.token, r.layer] = value  # type: ignore[index]
    return FactTrace(fact=fact, clean=clean, corrupted=float(p[0]), scores=scores)


def _patched_forward(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    todo: list[Restoration],
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """One forward of len(todo) × samples corrupted rows; row group r gets restoration todo[r]."""
    samples = noise.shape[0]
    rows = len(todo) * samples
    s, e = fact.subject
    # (kind, layer) -> rows and tokens to restore there
    plan: dict[tuple[str, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for r, res in enumerate(todo):
        if res.kind is None:
            continue
        for layer in layer_window(res.layer, res.kind, layout.num_layers, window):
            group_rows, group_tokens = plan[(res.kind, layer)]
            group_rows.extend(range(r * samples, (r + 1) * samples))
            group_tokens.extend([res.token] * samples)

    def corrupt(_m: object, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, s:e] += noise.repeat(len(todo), 1, 1).to(out.dtype)
        return out

    hooks = [layout.embeddings.register_forward_hook(corrupt)]
    for (kind, layer), (group_rows, group_tokens) in plan.items():
        idx_rows, idx_tokens = torch.tensor(group_rows), torch.tensor(group_tokens)
        clean = states[kind][layer][idx_tokens]

        def restore(
            _m: object,
            _i: object,
            out: object,
            r: torch.Tensor = idx_rows,
            t: torch.Tensor = idx_tokens,
            c: torch.Tensor = clean,
        ) -> object:
            h = _first(out).clone()
            h[r, t] = c.to(h.dtype)
            return _replace_first(out, h)

        hooks.append(layout.module(kind, layer).register_forward_hook(restore))  # type: ignore[arg-type]
    try:
        ids = torch.tensor([fact.ids]).expand(rows, -1)
        logits = _last_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return torch.softmax(logits.float(), -1)[:, fact.target]


@torch.no_grad()
def corrupted_score(
    model: torch.nn.Module, layout: Layout, fact: Fact, samples: int, noise_std: float, seed: int
) -> tuple[float, float]:
    """(clean, fully corrupted) p(target) for one fact: is its answer carried by the subject at all?"""
    states, clean = clean_run(model, layout, fact)
    noise = subject_noise(fact, states["hidden"][0].shape[-1], samples, noise_std, seed)
    low = _patched_forward(model, layout, fact, [Restoration(None, 0, 0)], states, noise, window=1)
    return clean, float(low.mean())


def _last_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits at the last position only: the LM head over every position is wasted work here."""
    import inspect

    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    return model(input_ids=ids).logits[:, -1]


@torch.no_grad()
def subject_embedding_std(layout: Layout, facts: list[Fact]) -> float:
    """The empirical std of the subject tokens' embeddings, over all facts (ROME's noise scale)."""
    ids = torch.tensor([t for f in facts for t in f.ids[f.subject[0] : f.subject[1]]])
    return layout.embeddings(ids).float().std().item()


# ---------------------------------------------------------------- aggregation and layer choice

GROUPS = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def token_groups(tokens: int, subject: tuple[int, int]) -> dict[str, list[int]]:
    """ROME's token groups; tokens before the subject belong to none of them."""
    s, e = subject
    return {
        "first subject token": [s],
        "middle subject tokens": list(range(s + 1, e - 1)),
        "last subject token": [e - 1],
        "first subsequent token": [e] if e < tokens else [],
        "further tokens": list(range(e + 1, tokens - 1)),
        "last token": [tokens - 1],
    }


def aggregate(traces: list[FactTrace], kind: str) -> np.ndarray:
    """[group, layer] mean indirect effect over facts (a group a fact lacks does not count for it)."""
    layers = next(iter(traces[0].scores.values())).shape[1]
    sums, counts = np.zeros((len(GROUPS), layers)), np.zeros((len(GROUPS), 1))
    for tr in traces:
        effect = tr.effect(kind)
        for g, positions in enumerate(token_groups(len(tr.fact.ids), tr.fact.subject).values()):
            if positions:
                sums[g] += effect[positions].mean(0)
                counts[g] += 1
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def choose_layers(mlp_last_subject: np.ndarray, k: int) -> list[int]:
    """The contiguous window of k layers with the largest mean MLP indirect effect at the last subject
    token; ties go to the earlier window."""
    k = max(1, min(k, len(mlp_last_subject)))
    means = [float(np.mean(mlp_last_subject[i : i + k])) for i in range(len(mlp_last_subject) - k + 1)]
    best = int(np.argmax(means))
    return list(range(best, best + k))
