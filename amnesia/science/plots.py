"""Plots, rendered headless with matplotlib: ROME-style causal-trace heatmaps (tokens × layers) and
training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def curves(
    history: Sequence[Mapping[str, float]],
    evals: Sequence[Mapping[str, float]],
    title: str,
    path: Path,
    phase_starts: Sequence[float] = (),
) -> Path:
    """Training curves, one panel each: forget/retain (or distillation) loss per step, the held-out evaluation
    (loss and the share of forget/retain items still reproduced), and the schedule (lr, and m or eta when the
    method has one). A method with phases (UNDO) gets a dotted line where each later phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=120)
    steps = [h["step"] for h in history]
    for key, color in (("forget_loss", "tab:red"), ("retain_loss", "tab:blue"), ("distill_loss", "tab:orange")):
        if any(key in h for h in history):
            axes[0].plot(steps, [h.get(key, np.nan) for h in history], color=color, label=key.replace("_", " "))
    axes[0].set_title("training losses", fontsize=9)
    e_steps = [e["step"] for e in evals]
    axes[1].plot(e_steps, [e["forget_exact"] for e in evals], "o-", color="tab:red", label="forget reproduced")
    axes[1].plot(e_steps, [e["retain_exact"] for e in evals], "o-", color="tab:blue", label="retain reproduced")
    axes[1].set_ylim(-0.05, 1.05)
    twin = axes[1].twinx()
    twin.plot(e_steps, [e["eval_loss"] for e in evals], "s--", color="grey", label="held-out joint loss")
    twin.tick_params(labelsize=7)
    axes[1].set_title("held-out evaluation", fontsize=9)
    axes[2].plot(steps, [h["lr"] for h in history], color="black", label="lr")
    for key, color in (("m", "tab:green"), ("eta", "tab:purple")):
        if any(key in h for h in history):
            other = axes[2].twinx()
            other.plot(steps, [h.get(key, np.nan) for h in history], color=color, label=key)
            other.legend(fontsize=7, loc="lower right")
            other.tick_params(labelsize=7)
    axes[2].set_title("schedule", fontsize=9)
    for ax in axes:
        for start in phase_starts:
            ax.axvline(start, ls=":", color="black", lw=0.8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def tradeoff(points: Mapping[str, tuple[float, float]], floors: tuple[float | None, float | None], path: Path) -> Path:
    """Forget score (x) against retain score (y) per model, an arrow from the first to the last, and the
    gate's floors as dashed lines: the top-right corner is where a candidate should land."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
    names = list(points)
    xs, ys = zip(*points.values(), strict=True)
    if len(names) >= 2:
        ax.annotate("", xy=points[names[-1]], xytext=points[names[0]], arrowprops={"arrowstyle": "->", "color": "grey"})
    for (name, (x, y)), color in zip(points.items(), ("tab:blue", "tab:red", "tab:green"), strict=False):
        ax.scatter([x], [y], s=60, color=color, zorder=3, label=f"{name} ({x:.2f}, {y:.2f})")
    if floors[0] is not None:
        ax.axvline(floors[0], ls="--", color="black", lw=0.8, label="gate floors")
    if floors[1] is not None:
        ax.axhline(floors[1], ls="--", color="black", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("forget score (harmonic mean of 1 - forget metrics)", fontsize=8)
    ax.set_ylabel("retain score (harmonic mean of retain metrics)", fontsize=8)
    ax.set_title("forget / retain trade-off", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def recovery_bars(figures: Mapping[str, Mapping[str, float]], ceilings: Mapping[str, float | None], path: Path) -> Path:
    """Recovery per attack variant (bars per forget metric), with each attack's gate ceiling as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(figures)
    metrics = sorted({m for v in figures.values() for m in v})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(variants) + 2), 3.6))
    width = 0.8 / max(1, len(metrics))
    for i, m in enumerate(metrics):
        ax.bar(np.arange(len(variants)) + i * width, [figures[v].get(m, 0.0) for v in variants], width, label=m)
    for j, v in enumerate(variants):
        ceiling = ceilings.get("rtt" if v == "rtt" else "quant")
        if ceiling is not None:
            ax.hlines(ceiling, j - width / 2, j + 0.8 - width / 2, colors="#c0392b", linestyles="--")
    ax.set_xticks(np.arange(len(variants)) + 0.4 - width / 2, variants, rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recovery")
    ax.set_title("Attacks on forgetting: share of the forgotten brought back (dashed: gate ceiling)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_trials(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """The settings search, one bar per trial in the order run: its smallest gate margin (without the attacks;
    the attacked margin as a dot where the attacks ran), pruned trials as grey stubs, the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 2), 3.2), dpi=120)
    for i, r in enumerate(rows):
        margin = r.get("margin")
        if margin is None:  # pruned or failed: no verdict
            ax.bar(i, -0.05, color="#bbbbbb", width=0.7)
            continue
        ax.bar(i, float(margin), color="#2a9d8f" if float(margin) >= 0 else "#e76f51", width=0.7)  # type: ignore[arg-type]
        if r.get("attacked_margin") is not None:
            ax.plot(i, float(r["attacked_margin"]), "ko", markersize=4)  # type: ignore[arg-type]
        if r.get("chosen"):
            ax.annotate("*", (i, max(float(margin), float(r.get("attacked_margin") or margin))),  # type: ignore[arg-type]
                        ha="center", va="bottom", fontsize=14)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(r.get("number")) for r in rows], fontsize=7)
    ax.set_xlabel("trial (grey: pruned or failed; dot: with the attacks; *: chosen)", fontsize=8)
    ax.set_ylabel("smallest gate margin", fontsize=8)
    ax.set_title("Settings search: each trial's closest gate check", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
