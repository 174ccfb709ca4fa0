"""Attribution patching (Nanda 2023; AtP*, Kramár et al. 2024, arXiv 2403.00745): every causal-tracing cell
estimated from one clean forward, one corrupted forward and one backward.

A cell restores the clean output of a module (hidden / MLP / attention) at one token. To first order, the
change in mean p(target) is (clean − corrupted activation) · ∂p/∂activation, summed over the hidden
dimension and the noise samples; a window of layers adds its layers' terms. Exact where p is linear in
the activation, wrong where it is not (saturated softmaxes, large activations): `hybrid` screens with it
and confirms the cells that matter by exact patching.

GradDrop (AtP*): effects that cancel along different paths hide a cell from a first-order screen. Redoing
the backward once per layer with that layer's residual branches cut (their outputs detached) and
averaging the magnitudes, (1 / (L − 1)) Σ_l |AtP_(l)|, brings such cells back. It costs L more row groups
in the same forward/backward, so it is opt-in. AtP*'s other fix (QK) is for query/key nodes, which are not
cells here; the exact confirmation is what guards the attention cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from amnesia.science.architecture import Kind, Layout
from amnesia.science.tracing.causal import (
    DEFAULT_OPTIONS,
    Fact,
    FactTrace,
    Restoration,
    TraceOptions,
    _device,
    _first,
    _last_logits,
    _replace_first,
    clean_run,
    exact_scores,
    layer_window,
    subject_noise,
    token_groups,
)
from amnesia.science.tracing.layer_choice import RULE_GROUPS


def _noise_leaf(noise: torch.Tensor, s: int, e: int) -> Callable[..., torch.Tensor]:
    """Corrupt the subject and start the graph here: no parameter needs a gradient."""

    def corrupt(_m: object, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.detach().clone()
        out[:, s:e] += noise.to(out.dtype)
        return out.requires_grad_(True)

    return corrupt


def _capture(
    kept: dict[tuple[str, int], torch.Tensor], key: tuple[str, int], cut: slice | None
) -> Callable[..., object]:
    """Keep the module's output as a graph node; rows in `cut` pass their value on without a gradient path
    back into this branch (GradDrop's cut of this layer)."""

    def hook(_m: object, _i: object, out: object) -> object:
        h = _first(out)
        if cut is not None:
            h = torch.cat([h[: cut.start], h[cut].detach(), h[cut.stop :]])
        kept[key] = h
        return _replace_first(out, h)

    return hook


def _first_order(
    model: torch.nn.Module,
    layout: Layout,
    fact: Fact,
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    kinds: tuple[Kind, ...],
    graddrop: bool,
) -> tuple[float, dict[str, np.ndarray]]:
    """(corrupted p(target), kind -> [groups, tokens, layers] first-order effects of single-layer cells).
    Group 0 is plain AtP; group 1 + l has layer l's attention and MLP branches cut (GradDrop)."""
    samples, layers = noise.shape[0], layout.num_layers
    groups = 1 + (layers if graddrop else 0)
    s, e = fact.subject
    kept: dict[tuple[str, int], torch.Tensor] = {}
    hooks = [layout.embeddings.register_forward_hook(_noise_leaf(noise.repeat(groups, 1, 1), s, e))]
    for kind in kinds:
        for layer in range(layers):
            cut = slice((1 + layer) * samples, (2 + layer) * samples) if graddrop and kind != "hidden" else None
            hooks.append(layout.module(kind, layer).register_forward_hook(_capture(kept, (kind, layer), cut)))
    if graddrop:  # the branches must be cut even where their kind is not traced
        for kind in ("mlp", "attn"):
            if kind not in kinds:
                for layer in range(layers):
                    cut = slice((1 + layer) * samples, (2 + layer) * samples)
                    hooks.append(layout.module(kind, layer).register_forward_hook(_capture({}, (kind, layer), cut)))
    try:
        with torch.enable_grad():
            ids = torch.tensor([fact.ids], device=noise.device).expand(groups * samples, -1)
            probs = torch.softmax(_last_logits(model, ids, use_cache=False).float(), -1)[:, fact.target]
            per_group = probs.view(groups, samples).mean(1)
            keys = list(kept)
            grads = torch.autograd.grad(per_group.sum(), [kept[k] for k in keys], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    out = {k: np.zeros((groups, len(fact.ids), layers)) for k in kinds}
    for (kind, layer), act, grad in zip(keys, (kept[k] for k in keys), grads, strict=True):
        if grad is None:
            continue
        delta = states[kind][layer].to(act.dtype)[None] - act.detach()
        terms = (delta.float() * grad.float()).sum(-1).view(groups, samples, -1).sum(1)  # [groups, tokens]
        out[kind][:, :, layer] = terms.cpu().numpy()
    return float(per_group[0].detach()), out


def _windowed(cells: np.ndarray, kind: Kind, window: int) -> np.ndarray:
    """[..., tokens, layers] single-layer terms -> the sum over each layer's restoration window."""
    layers = cells.shape[-1]
    out = np.zeros_like(cells)
    for layer in range(layers):
        out[..., layer] = cells[..., layer_window(layer, kind, layers, window)].sum(-1)
    return out


@torch.no_grad()
def atp_trace(
    model: torch.nn.Module, layout: Layout, fact: Fact, opts: TraceOptions = DEFAULT_OPTIONS
) -> tuple[FactTrace, dict[str, np.ndarray]]:
    """(the estimated trace, kind -> [tokens, layers] screening score). The trace's scores are
    corrupted + the first-order effect; the screening score is |effect|, or GradDrop's mean magnitude."""
    trace, screen, _states, _noise = _atp(model, layout, fact, opts)
    return trace, screen


def _atp(
    model: torch.nn.Module, layout: Layout, fact: Fact, opts: TraceOptions
) -> tuple[FactTrace, dict[str, np.ndarray], dict[str, list[torch.Tensor]], torch.Tensor]:
    states, clean = clean_run(model, layout, fact)
    noise = subject_noise(fact, states["hidden"][0].shape[-1], opts.samples, opts.noise_std, opts.seed, _device(model))
    kinds, window, graddrop = opts.kinds, opts.window, opts.graddrop
    low, terms = _first_order(model, layout, fact, states, noise, kinds, graddrop)
    scores, screen = {}, {}
    for kind in kinds:
        windowed = _windowed(terms[kind], kind, window)
        scores[kind] = low + windowed[0]
        layers = layout.num_layers
        screen[kind] = np.abs(windowed[1:]).sum(0) / max(1, layers - 1) if graddrop else np.abs(windowed[0])
        scores[kind][: fact.subject[0]] = low  # nothing before the subject changes (causal mask): exactly
        screen[kind][: fact.subject[0]] = 0.0
    exact = {k: np.zeros(v.shape, dtype=bool) for k, v in scores.items()}
    for grid in exact.values():
        grid[: fact.subject[0]] = True
    return FactTrace(fact=fact, clean=clean, corrupted=low, scores=scores, exact=exact), screen, states, noise


@torch.no_grad()
def hybrid_trace(model: torch.nn.Module, layout: Layout, fact: Fact, opts: TraceOptions = DEFAULT_OPTIONS) -> FactTrace:
    """AtP for every cell, then patched exactly, reusing the clean states: the `top` cells of the screen, and
    the MLP row of the token group where this fact's estimated MLP effect peaks, the row the layer rule will
    most likely read (the trace stage patches whatever group it finally reads, so a wrong guess costs time,
    never exactness)."""
    trace, screen, states, noise = _atp(model, layout, fact, opts)
    cells = top_cells(screen, opts.top)
    if "mlp" in opts.kinds:
        cells += [Restoration("mlp", t, layer) for t in _likely_group(trace) for layer in range(layout.num_layers)]
    _confirm(model, layout, trace, cells, states, noise, opts)
    return trace


def _likely_group(trace: FactTrace) -> list[int]:
    """The positions of the rule's token group with the largest estimated MLP effect in this fact."""
    groups = token_groups(len(trace.fact.ids), trace.fact.subject)
    effect = trace.effect("mlp")
    best = max((g for g in RULE_GROUPS if groups[g]), key=lambda g: effect[groups[g]].mean(0).max())
    return groups[best]


@torch.no_grad()
def confirm(
    model: torch.nn.Module,
    layout: Layout,
    trace: FactTrace,
    cells: list[Restoration],
    opts: TraceOptions = DEFAULT_OPTIONS,
) -> int:
    """Replace the estimates of `cells` (not yet exact) by exact patching, in place; returns how many ran."""
    if not _pending(trace, cells):
        return 0
    fact = trace.fact
    states, _ = clean_run(model, layout, fact)
    noise = subject_noise(fact, states["hidden"][0].shape[-1], opts.samples, opts.noise_std, opts.seed, _device(model))
    return _confirm(model, layout, trace, cells, states, noise, opts)


def _pending(trace: FactTrace, cells: list[Restoration]) -> list[Restoration]:
    return [c for c in cells if c.kind is not None and not trace.exact[c.kind][c.token, c.layer]]


def _confirm(
    model: torch.nn.Module,
    layout: Layout,
    trace: FactTrace,
    cells: list[Restoration],
    states: dict[str, list[torch.Tensor]],
    noise: torch.Tensor,
    opts: TraceOptions,
) -> int:
    todo = _pending(trace, cells)
    if not todo:
        return 0
    values = exact_scores(model, layout, trace.fact, todo, states, noise, opts)
    for c, value in zip(todo, values, strict=True):
        trace.scores[c.kind][c.token, c.layer] = value  # type: ignore[index]
        trace.exact[c.kind][c.token, c.layer] = True  # type: ignore[index]
    return len(todo)


def top_cells(screen: dict[str, np.ndarray], n: int) -> list[Restoration]:
    """The n cells with the largest screening score, over every kind."""
    flat = [(float(v), kind, t, layer) for kind, grid in screen.items() for (t, layer), v in np.ndenumerate(grid)]
    flat.sort(key=lambda x: -x[0])
    return [Restoration(kind, t, layer) for _v, kind, t, layer in flat[:n]]  # type: ignore[arg-type]
