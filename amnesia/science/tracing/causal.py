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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from amnesia.science.architecture import Kind, Layout

KINDS: tuple[Kind, ...] = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class TraceOptions:
    """How facts are traced, one typed object for every tracer (exact, AtP, hybrid, confirm)."""

    kinds: tuple[Kind, ...] = KINDS  # what is restored: hidden states, MLP outputs, attention outputs
    samples: int = 10  # noise samples per fact
    noise_std: float = 0.1  # the subject's corruption (ROME: 3 × the embeddings' std)
    window: int = 10  # layers restored together around each layer (MLP and attention)
    seed: int = 0
    max_rows: int = 2048  # batch rows per forward pass
    prefix_cache: bool = True  # share the corrupted prefix's KV cache between restorations (exact patching)
    graddrop: bool = False  # AtP's screening score: GradDrop's mean magnitude instead of |effect|
    top: int = 8  # hybrid: the screened cells patched exactly (besides the likely MLP row)


DEFAULT_OPTIONS = TraceOptions()


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
    exact: dict[str, np.ndarray] = None  # type: ignore[assignment]  # kind -> [tokens, layers]: patched, not estimated

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = {k: np.ones(v.shape, dtype=bool) for k, v in self.scores.items()}

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


def _device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: every tensor the tracer makes follows the model (CPU or GPU)."""
    return next(model.parameters()).device


def subject_noise(
    fact: Fact, hidden: int, samples: int, std: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The fixed noise for one fact: the same draws for every restoration (and for the reference).
    Drawn on the CPU from a seeded generator, so a fact gets the same noise on any device."""
    gen = torch.Generator().manual_seed(seed)
    span = fact.subject[1] - fact.subject[0]
    return (torch.randn(samples, span, hidden, generator=gen) * std).to(device)


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
        logits = model(input_ids=torch.tensor([fact.ids], device=_device(model)), use_cache=False).logits
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
def trace_fact(model: torch.nn.Module, layout: Layout, fact: Fact, opts: TraceOptions = DEFAULT_OPTIONS) -> FactTrace:
    """Every (token, layer) restoration of every kind for one fact, batched.

    Exact savings: restorations before the subject are not computed (the noise has not reached those
    positions under a causal mask, so they equal the corrupted run); with prefix_cache, the corrupted
    prefix before each restored token is run once and its KV cache shared, so each restoration only
    recomputes the positions from its token on.
    """
    states, clean = clean_run(model, layout, fact)
    tokens, layers, kinds = len(fact.ids), layout.num_layers, opts.kinds
    noise = subject_noise(fact, states["hidden"][0].shape[-1], opts.samples, opts.noise_std, opts.seed, _device(model))
    low = float(_patched_forward(model, layout, fact, [Restoration(None, 0, 0)], states, noise, opts.window).mean())
    scores = {k: np.full((tokens, layers), low) for k in kinds}
    todo = [Restoration(k, t, layer) for t in range(fact.subject[0], tokens) for k in kinds for layer in range(layers)]
    values = exact_scores(model, layout, fact, todo, states, noise, opts)
    for r, value in zip(todo, values, strict=True):
        scores[r.kind][r.token, r.layer] = value  # type: ignore[index]
    return FactTrace(fact=fact, clean=clean, corrupted=low, scores=scores)


@torch.no_grad()
def exact_scores(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    todo: list[Restoration],
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    opts: TraceOptions,
) -> list[float]:
    """Mean p(target) after each restoration in `todo` (in its order), batched `max_rows` rows a forward.
    The noise is given (its samples and std were drawn already); opts gives the window and the batching."""
    samples, window = noise.shape[0], opts.window
    per_chunk = max(1, opts.max_rows // samples)
    out: dict[int, float] = {}
    if opts.prefix_cache:
        tokens = sorted({r.token for r in todo})
        # One corrupted run up to the last restored token; each token's prefix is a crop of its cache (the
        # causal mask makes the first t positions the same whatever follows them).
        full = _corrupted_prefix(model, layout, fact, tokens[-1], noise)
        for t in tokens:
            at_t = [i for i, r in enumerate(todo) if r.token == t]
            prefix = _crop(full, t, tokens[-1])
            for start in range(0, len(at_t), per_chunk):
                chunk = at_t[start : start + per_chunk]
                probs = _patched_suffix(model, layout, fact, t, [todo[i] for i in chunk], states, noise, window, prefix)
                out.update(zip(chunk, probs.tolist(), strict=True))
    else:
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start : start + per_chunk]
            probs = _patched_forward(model, layout, fact, chunk, states, noise, window).view(len(chunk), samples)
            out.update(zip(range(start, start + len(chunk)), probs.mean(1).tolist(), strict=True))
    return [out[i] for i in range(len(todo))]


def _restore_plan(
    todo: list[Restoration],
    layout: Layout,
    window: int,
    row_of: Callable[[int, int], int],
    samples: int,
    device: torch.device,
) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """(kind, layer) -> (batch rows, their restored token) for every restoration covering that layer."""
    plan: dict[tuple[str, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for r, res in enumerate(todo):
        if res.kind is not None:
            for layer in layer_window(res.layer, res.kind, layout.num_layers, window):
                rows, tokens = plan[(res.kind, layer)]
                rows.extend(row_of(r, j) for j in range(samples))
                tokens.extend([res.token] * samples)
    return {
        key: (torch.tensor(rows, device=device), torch.tensor(tokens, device=device))
        for key, (rows, tokens) in plan.items()
    }


def _restore_hook(rows: torch.Tensor, positions: torch.Tensor, clean: torch.Tensor) -> Callable[..., object]:
    """Put clean states back at (rows, positions) of a module's output."""

    def restore(_m: object, _i: object, out: object) -> object:
        h = _first(out).clone()
        h[rows, positions] = clean.to(h.dtype)
        return _replace_first(out, h)

    return restore


def _noise_hook(noise: torch.Tensor, lo: int, hi: int) -> Callable[..., torch.Tensor]:
    def corrupt(_m: object, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, lo:hi] += noise.to(out.dtype)
        return out

    return corrupt


def _crop(cache: object, t: int, length: int) -> object:
    """The first t positions of a cache holding `length` (a copy; None when t is 0). A negative crop
    removes that many positions in every transformers version (positive values changed meaning)."""
    import copy

    if t == 0 or cache is None:
        return None
    out = copy.deepcopy(cache)
    if t < length:
        out.crop(t - length)  # type: ignore[attr-defined]
    return out


def _corrupted_prefix(model: torch.nn.Module, layout: Layout, fact: Fact, t: int, noise: torch.Tensor) -> object:
    """The KV cache of the corrupted prompt's first t tokens (one entry per noise sample), or None."""
    if t == 0:
        return None
    s, e = fact.subject
    hi = min(e, t)
    hooks = [layout.embeddings.register_forward_hook(_noise_hook(noise[:, : hi - s], s, hi))] if s < hi else []
    try:
        ids = torch.tensor([fact.ids[:t]], device=noise.device).expand(noise.shape[0], -1)
        out = model(input_ids=ids, use_cache=True)
        return out.cache if hasattr(out, "cache") else out.past_key_values
    finally:
        for h in hooks:
            h.remove()


def _patched_suffix(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    t: int,
    todo: list[Restoration],
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    window: int,
    prefix: object,
) -> torch.Tensor:
    """Restorations at token t, run from t on over the shared corrupted prefix; mean p(target) each."""
    import copy

    samples, n = noise.shape[0], len(todo)
    s, e = fact.subject
    # Rows are sample-major (row = sample * n + r): the layout batch_repeat_interleave gives the cache.
    plan = _restore_plan(todo, layout, window, lambda r, j: j * n + r, samples, noise.device)
    lo, hi = max(s, t), max(e, t)
    hooks = []
    if lo < hi:
        part = noise[:, lo - s : hi - s].repeat_interleave(n, dim=0)
        hooks.append(layout.embeddings.register_forward_hook(_noise_hook(part, lo - t, hi - t)))
    for (kind, layer), (rows, _tokens) in plan.items():
        # Every row here restores token t, which is position 0 of the suffix.
        clean = states[kind][layer][t].expand(len(rows), -1)
        hooks.append(
            layout.module(kind, layer).register_forward_hook(_restore_hook(rows, torch.zeros_like(rows), clean))
        )
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(n)  # type: ignore[attr-defined]
    try:
        ids = torch.tensor([fact.ids[t:]], device=noise.device).expand(samples * n, -1)
        logits = _last_logits(model, ids, use_cache=cache is not None, **{_cache_keyword(model): cache})
    finally:
        for h in hooks:
            h.remove()
    return torch.softmax(logits.float(), -1)[:, fact.target].view(samples, n).mean(0)


def _patched_forward(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    todo: list[Restoration],
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """One forward of the whole prompt, len(todo) × samples corrupted rows (row = r * samples + sample);
    row group r gets restoration todo[r]. Returns p(target) per row."""
    samples, n = noise.shape[0], len(todo)
    s, e = fact.subject
    plan = _restore_plan(todo, layout, window, lambda r, j: r * samples + j, samples, noise.device)
    hooks = [layout.embeddings.register_forward_hook(_noise_hook(noise.repeat(n, 1, 1), s, e))]
    for (kind, layer), (rows, tokens) in plan.items():
        hooks.append(
            layout.module(kind, layer).register_forward_hook(_restore_hook(rows, tokens, states[kind][layer][tokens]))
        )
    try:
        ids = torch.tensor([fact.ids], device=noise.device).expand(n * samples, -1)
        logits = _last_logits(model, ids, use_cache=False)  # no cache: nothing reads it
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
    noise = subject_noise(fact, states["hidden"][0].shape[-1], samples, noise_std, seed, _device(model))
    low = _patched_forward(model, layout, fact, [Restoration(None, 0, 0)], states, noise, window=1)
    return clean, float(low.mean())


def _cache_keyword(model: torch.nn.Module) -> str:
    """`cache` where the model takes it (transformers >= 5.24; `past_key_values` is removed in 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _last_logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Logits at the last position only: the LM head over every position is wasted work here."""
    import inspect

    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return model(input_ids=ids, **kwargs).logits[:, -1]


@torch.no_grad()
def subject_embedding_std(layout: Layout, facts: list[Fact]) -> float:
    """The empirical std of the subject tokens' embeddings, over all facts (ROME's noise scale)."""
    device = next(layout.embeddings.parameters()).device
    ids = torch.tensor([t for f in facts for t in f.ids[f.subject[0] : f.subject[1]]], device=device)
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
