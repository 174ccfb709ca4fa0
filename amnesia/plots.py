"""ROME-style causal-trace heatmaps (tokens × layers), rendered headless with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"hidden": "single restored layer", "mlp": "restored MLP", "attn": "restored attention"}


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    kind: str,
    title: str,
    path: Path,
    colorbar: str,
    marked: Sequence[int] = (),
) -> Path:
    """Rows (tokens or token groups) × layers; marked rows (the subject) get a '*'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r}*" if i in set(marked) else r for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(3.2 + 0.28 * values.shape[1], 1.0 + 0.32 * len(rows)), dpi=150)
    img = ax.pcolor(np.ma.masked_invalid(values), cmap=CMAPS.get(kind, "Greys"))
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=8)
    step = max(1, values.shape[1] // 12)
    ax.set_xticks([i + 0.5 for i in range(0, values.shape[1], step)])
    ax.set_xticklabels([str(i) for i in range(0, values.shape[1], step)], fontsize=8)
    ax.set_xlabel(f"layer ({TITLES.get(kind, kind)})", fontsize=8)
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(img, ax=ax)
    bar.ax.set_title(colorbar, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
