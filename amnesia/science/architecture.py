"""Find a decoder-only causal LM's parts by inspecting it: embeddings, decoder layers, and each layer's
MLP and attention. Works for OLMo, OLMo2, Llama, Qwen2, Mistral, GPT-2, GPT-NeoX and kin; a model
whose parts cannot be found is refused, naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from amnesia.core.errors import AmnesiaError

Kind = Literal["hidden", "mlp", "attn"]
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")


class ArchitectureError(AmnesiaError):
    """The model's module layout is not one we can trace or train selectively."""


@dataclass
class Layout:
    embeddings: nn.Module
    layers: nn.ModuleList
    layers_path: str  # e.g. "model.layers"
    mlp_name: str  # child name inside a layer, e.g. "mlp"
    attn_name: str  # e.g. "self_attn"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def module(self, kind: Kind, layer: int) -> nn.Module:
        block = self.layers[layer]
        if kind == "hidden":
            return block
        return getattr(block, self.mlp_name if kind == "mlp" else self.attn_name)

    def prefix(self, kind: Kind, layer: int) -> str:
        """Parameter-name prefix of a layer's part, e.g. 'model.layers.3.mlp'."""
        base = f"{self.layers_path}.{layer}"
        return base if kind == "hidden" else f"{base}.{self.mlp_name if kind == 'mlp' else self.attn_name}"


def _num_layers(config: Any) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def inspect_model(model: nn.Module) -> Layout:
    cls = type(model).__name__
    n = _num_layers(getattr(model, "config", None))
    if n is None:
        raise ArchitectureError(f"{cls}: its config names no layer count (num_hidden_layers / n_layer)")
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n]
    if not lists:
        raise ArchitectureError(f"{cls}: no list of {n} decoder layers found among its modules")
    path, layers = min(lists, key=lambda item: item[0].count("."))
    children = {name for name, _ in layers[0].named_children()}
    mlp = next((c for c in MLP_NAMES if c in children), None)
    attn = next((c for c in ATTN_NAMES if c in children), None)
    missing = [what for what, found in (("MLP", mlp), ("attention module", attn)) if found is None]
    if missing:
        raise ArchitectureError(
            f"{cls}: decoder layer {path}.0 has no {' and no '.join(missing)} "
            f"(children: {', '.join(sorted(children)) or 'none'}; looked for "
            f"{'/'.join(MLP_NAMES)} and {'/'.join(ATTN_NAMES)})"
        )
    get_emb = getattr(model, "get_input_embeddings", None)
    embeddings = get_emb() if callable(get_emb) else None
    if not isinstance(embeddings, nn.Module):
        raise ArchitectureError(f"{cls}: no input embeddings (get_input_embeddings returned nothing)")
    return Layout(embeddings=embeddings, layers=layers, layers_path=path, mlp_name=mlp, attn_name=attn)  # type: ignore[arg-type]
