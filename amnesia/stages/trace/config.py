"""Stage 2's config: which facts are traced, how, and the rule that picks the layers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amnesia.core.config import StrictModel


class TraceConfig(StrictModel):
    """Stage 2: causal tracing of the forget facts, and the choice of layers to unlearn."""

    kinds: list[Literal["hidden", "mlp", "attn"]] = ["hidden", "mlp", "attn"]
    noise_multiplier: float = Field(3.0, gt=0, description="Noise std = this × the subject embeddings' std.")
    samples: int = Field(10, ge=1, le=1000, description="Corrupted copies per fact.")
    window: int = Field(10, ge=1, description="Layers restored together for mlp/attn, centred on the layer.")
    seed: int = Field(0, ge=0)
    max_facts: int | None = Field(
        None,
        ge=1,
        description="Trace at most this many facts: a stratified sample (per request, per answer kind) drawn "
        "with `seed`, so a large forget set does not mean as many traces.",
    )
    min_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Skip facts whose answer barely depends on the "
        "subject: corrupting it lowers p(target) by less than this.",
    )
    method: Literal["exact", "atp", "hybrid"] = Field(
        "exact",
        description="exact: every cell by patching (ROME). atp: attribution patching, every cell estimated from "
        "one forward and one backward (approximate). hybrid: atp screens, exact patching confirms each fact's "
        "top cells and the chosen token group's row, so the layer choice rests on exact effects.",
    )
    confirm: int = Field(8, ge=0, description="hybrid: the top cells per fact confirmed by exact patching.")
    graddrop: bool = Field(
        False, description="atp/hybrid: AtP*'s GradDrop screen (L more row groups; finds cells whose paths cancel)."
    )
    k: int = Field(3, ge=1, description="Window size of the automatic layer choice.")
    group: Literal["auto", "first subject token", "middle subject tokens", "last subject token", "last token"] = Field(
        "auto",
        description="The token group the rule reads; auto: the one whose best window stands furthest above noise.",
    )
    min_confidence: float = Field(
        2.0,
        description="The chosen window's mean MLP effect over its bootstrap spread across facts must reach this; "
        "below it the choice is noise: refuse, or use fallback_layers with a warning.",
    )
    fallback_layers: list[int] | None = Field(
        None, description="Layers to use (with a loud warning) when no window is above noise; none: refuse."
    )
    resamples: int = Field(200, ge=20, le=10000, description="Bootstrap resamples of the facts for the confidence.")
    layers: list[int] | None = Field(None, description="Explicit layers to unlearn; wins over the rule.")
    heatmap_facts: int = Field(3, ge=0, le=50, description="Single-fact heatmaps to draw (stored in S3 only).")
    max_rows: int = Field(2048, ge=16, description="Rows per batched forward pass.")
    prefix_cache: bool | Literal["auto"] = Field(
        "auto",
        description="Share the corrupted prefix's KV cache across restorations (exact); off: every "
        "restoration runs the whole prompt. auto: on a CPU (compute-bound: 1.7x faster on the demo model), "
        "off on a GPU (launch-bound: 4-5x slower there on an H100).",
    )
