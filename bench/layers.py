"""Benchmark: does the traced layer choice help? The same unlearning (method, config, budget) on different
layer choices, scored on the same sets, in one run.

    .venv/bin/python bench/layers.py [--random-seeds 3] [--epochs N] [--json FILE] [--plot FILE]
    .venv/bin/python bench/layers.py --model random --items 8 --epochs 1   # seconds: the code path only

On the demo world and its trained base model (trained once into ~/.cache/amnesia/models): the layers the
trace stage's rule chooses, k random layers (several seeds), the first k layers, the last k, and all layers.
For each: forget score (1 − knowledge/regurgitation, harmonic), retain score on the people unlearning
trains on, held-out retain score on the people in neither set (everyone else the model knows), and the
utility set (the demo's MMLU-format questions). The machinery (bench/common.py) is the pipeline's own
functions, on local files instead of S3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import demo_arguments, demo_setup, score, traced_layers, unlearn  # noqa: E402

from amnesia.demo.prepare import demo_trace_config, demo_unlearn_config  # noqa: E402
from amnesia.science.architecture import inspect_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-seeds", type=int, default=3, help="random layer choices to try")
    demo_arguments(ap)
    args = ap.parse_args()
    d = demo_setup(args)
    world, sets, base, tok, utility = d.world, d.sets, d.base, d.tok, d.utility
    num_layers = inspect_model(base).num_layers
    traced = traced_layers(base, tok, sets, [q["subject"] for q in world.requests])
    k = len(traced) if traced else demo_trace_config().k
    variants: dict[str, list[int]] = {"traced": traced} if traced else {}
    for seed in range(args.random_seeds):
        variants[f"random (seed {seed})"] = sorted(
            np.random.default_rng(seed).choice(num_layers, k, replace=False).tolist()
        )
    variants |= {"first k": list(range(k)), "last k": list(range(num_layers - k, num_layers)),
                 "all layers": list(range(num_layers))}  # fmt: skip

    rows = [{"variant": "base model", "layers": [], "steps": 0, "seconds": 0.0} | score(base, tok, sets, utility)]
    base_cfg = demo_unlearn_config()
    for name, layers in variants.items():
        update: dict[str, Any] = {"layers": layers} | ({"epochs": args.epochs} if args.epochs else {})
        cfg = base_cfg.model_copy(update=update)
        t0 = time.perf_counter()
        model, steps = unlearn(base, tok, sets, cfg)
        rows.append({"variant": name, "layers": layers, "steps": steps, "seconds": time.perf_counter() - t0}
                    | score(model, tok, sets, utility))  # fmt: skip
        print(f"  {name}: done in {rows[-1]['seconds']:.0f} s", flush=True)

    print(f"\nsha256 with the demo config ({args.epochs or base_cfg.epochs} epochs max, early stop as configured), "
          f"{len(sets['forget_train']) + len(sets['forget_eval'])} forget items, "
          f"{len(sets['retain_train'])} retain, {len(sets['retain_eval'])} held-out retain")  # fmt: skip
    print(f"{'variant':<18}{'layers':<20}{'steps':>6}{'forget':>8}{'retain':>8}{'held-out':>10}{'utility':>9}")
    for r in rows:
        print(f"{r['variant']:<18}{str(r['layers']):<20}{r['steps']:>6}{r['forget']:>8.3f}{r['retain']:>8.3f}"
              f"{r['held_out']:>10.3f}{r['utility']:>9.3f}")  # fmt: skip
    randoms = [r for r in rows if r["variant"].startswith("random")]
    if randoms:
        for key in ("forget", "held_out"):
            vals = [r[key] for r in randoms]
            print(f"random layers, {key}: mean {np.mean(vals):.3f}, spread (min..max) {min(vals):.3f}..{max(vals):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    if args.plot:
        _plot(rows, args.plot)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("forget", "retain", "held_out", "utility")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar(np.arange(len(rows)) + i * width, [r[key] for r in rows], width, label=key)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1.22)  # headroom for the legend above the bars
    ax.set_title("Unlearning by layer choice (demo world, sha256, same budget)")
    ax.legend(ncol=4, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
