"""Which parameters train: the selected layers' MLPs (SHA256's choice), their attention, whole layers,
or a name regex. Everything else is frozen: no gradient and no optimizer state."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from amnesia.core.errors import AmnesiaError
from amnesia.science.architecture import Layout


class SelectionError(AmnesiaError):
    """No parameter matches the selection, or a layer does not exist."""


def trainable_names(
    model: torch.nn.Module, layout: Layout, target: str, layers: Sequence[int], regex: str | None = None
) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if target == "regex":
        assert regex is not None
        pattern = re.compile(regex)
        chosen = [n for n in names if pattern.search(n)]
        what = f"unlearn.param_regex {regex!r}"
    else:
        bad = [i for i in layers if not 0 <= i < layout.num_layers]
        if bad or not layers:
            raise SelectionError(f"unlearn.layers {list(layers)}: the model has layers 0..{layout.num_layers - 1}")
        kind = {"mlp": "mlp", "attn": "attn", "layer": "hidden"}[target]
        prefixes = tuple(layout.prefix(kind, i) + "." for i in layers)  # type: ignore[arg-type]
        chosen = [n for n in names if n.startswith(prefixes)]
        what = f"unlearn.target {target} of layers {list(layers)}"
    if not chosen:
        raise SelectionError(f"{what} selects no parameters")
    return chosen


def freeze_all_but(model: torch.nn.Module, names: Sequence[str]) -> list[torch.nn.Parameter]:
    """requires_grad only on `names`; returns those parameters in model order."""
    wanted = set(names)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
        if name in wanted:
            params.append(p)
    return params


def count(params: Sequence[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)
