"""Benchmark: does the traced layer choice help? The same unlearning (method, config, budget) on different
layer choices, scored on the same sets, in one run.

    .venv/bin/python bench/layers.py [--random-seeds 3] [--epochs N] [--json FILE] [--plot FILE]
    .venv/bin/python bench/layers.py --model random --items 8 --epochs 1   # seconds: the code path only

On the demo world and its trained base model (trained once into ~/.cache/amnesia/models): the layers the
trace stage's rule chooses, k random layers (several seeds), the first k layers, the last k, and all layers.
For each: forget score (1 − knowledge/regurgitation, harmonic), retain score on the people unlearning
trains on, held-out retain score on the people in neither set (everyone else the model knows), and the
utility set (the demo's MMLU-format questions). The split, trace and evaluation are the pipeline's own
functions, on local files instead of S3.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.arch import inspect_model  # noqa: E402
from amnesia.config import EvaluateConfig, SplitConfig  # noqa: E402
from amnesia.demo.prepare import demo_trace_config, demo_unlearn_config, local_base_model  # noqa: E402
from amnesia.demo.world import WorldConfig, generate  # noqa: E402
from amnesia.evaluate import score_items  # noqa: E402
from amnesia.gate import forget_score, retain_score  # noqa: E402
from amnesia.mmlu import score_mmlu  # noqa: E402
from amnesia.models import load_model  # noqa: E402
from amnesia.records import UnlearningRecord  # noqa: E402
from amnesia.scoring import per_task  # noqa: E402
from amnesia.split import build_sets  # noqa: E402
from amnesia.trace import TraceError, confirmed_choice, decide_layers, select_facts, trace_facts  # noqa: E402
from amnesia.unlearn.config import UnlearnConfig  # noqa: E402
from amnesia.unlearn.data import PairedBatches, encode  # noqa: E402
from amnesia.unlearn.methods import method_class  # noqa: E402
from amnesia.unlearn.params import freeze_all_but, trainable_names  # noqa: E402
from amnesia.unlearn.trainer import Trainer, held_out_batches  # noqa: E402


class _Log:
    def info(self, *_a: object) -> None: ...

    def warning(self, *_a: object) -> None: ...


def _sets(world_dir: Path) -> dict[str, list[UnlearningRecord]]:
    """The split stage's sets, from the demo world's files (its own validation and assignment)."""
    cfg = SplitConfig(corpus=str(world_dir / "corpus.jsonl"), requests=str(world_dir / "requests.jsonl"))
    ctx = type("Ctx", (), {"store": None, "root": str(world_dir), "log": _Log()})()
    sets, _mia, _requests, _warnings = build_sets(cfg, ctx)  # type: ignore[arg-type]
    return sets


def traced_layers(
    model: Any, tok: Any, sets: dict[str, list[UnlearningRecord]], subjects: list[str]
) -> list[int] | None:
    """The trace stage's choice (facts, tracing, rule); None when it refuses (no signal above noise)."""
    cfg = demo_trace_config()
    ctx = type("Ctx", (), {"log": _Log()})()
    try:
        facts, std = select_facts(cfg, sets["forget_train"] + sets["forget_eval"], subjects, tok, model, Counter())
        if not facts:
            raise TraceError("no fact is known to the model and carried by its subject")
        layout = inspect_model(model)
        traces = trace_facts(cfg, model, layout, facts, std, ctx)  # type: ignore[arg-type]
        choice = confirmed_choice(cfg, model, layout, traces, std)
        layers, rule = decide_layers(cfg, choice)
    except TraceError as e:
        print(f"traced: refused ({e}); the traced variant is left out")
        return None
    print(f"traced: {len(facts)} facts, layers {layers} ({rule}, confidence {choice.confidence:.1f})")
    return layers


def unlearn(base: Any, tok: Any, sets: dict[str, list[UnlearningRecord]], cfg: UnlearnConfig) -> tuple[Any, int]:
    """The unlearn stage's training on a copy of the base model (no store, no checkpoints)."""
    model = copy.deepcopy(base)
    layers = cfg.layers or []
    names = trainable_names(model, inspect_model(model), cfg.target, layers, cfg.param_regex)
    freeze_all_but(model, names)
    eos = {n: cfg.forget_eos if n.startswith("forget") else cfg.retain_eos for n in sets}
    enc = {n: [encode(tok, r, cfg.prompt_format, cfg.max_length, eos[n]) for r in rs] for n, rs in sets.items()}
    pad = tok.pad_token_id
    data = PairedBatches(enc["forget_train"], enc["retain_train"], cfg.batch_size, cfg.seed, pad, cfg.retain_batch_size)
    held = held_out_batches(enc["forget_eval"], enc["retain_eval"], enc["forget_train"], cfg.batch_size, pad)
    named = dict(model.named_parameters())
    mcfg, cls = cfg.method_config(), method_class(cfg.method)
    reference = copy.deepcopy(base).eval() if cls.wants_reference(mcfg) else None
    method = cls(mcfg, model, [named[n] for n in names], reference=reference, layers=layers)
    state = Trainer(cfg, method, model, names, data, held).train()
    return model.eval(), state.step


def score(model: Any, tok: Any, sets: dict[str, list[UnlearningRecord]], utility: list[Any]) -> dict[str, float]:
    ecfg = EvaluateConfig(max_new_tokens=64)
    groups = {"forget": sets["forget_train"] + sets["forget_eval"], "retain": sets["retain_train"],
              "held_out": sets["retain_eval"]}  # fmt: skip
    out: dict[str, float] = {}
    for name, records in groups.items():
        _gens, values = score_items(model, tok, records, ecfg)
        tasks = per_task((r.task, r.kind, v) for r, v in zip(records, values, strict=True))
        out[name] = (forget_score if name == "forget" else retain_score)(tasks) or 0.0
    out["utility"] = score_mmlu(model, tok, utility, [], 0, 32).accuracy
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-seeds", type=int, default=3, help="random layer choices to try")
    ap.add_argument("--epochs", type=int, help="unlearning epochs (default: the demo config's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--model", default="demo", help="demo (the trained demo base model) or random (its architecture, untrained)"
    )
    ap.add_argument("--items", type=int, help="score at most this many items per set (a smoke run)")
    ap.add_argument("--json", type=Path, help="write the table here")
    ap.add_argument("--plot", type=Path, help="save a bar chart of the table here (PNG)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    world = generate(WorldConfig())
    if args.model == "random":
        from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer

        tok = train_tokenizer(world.training_texts(), 2048)
        base = build_model(TrainConfig(), tok).eval()
    else:
        loaded = load_model(str(local_base_model()))
        base, tok = loaded.model.eval(), loaded.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        world.write(Path(tmp))
        sets = _sets(Path(tmp))
    if args.items:
        sets = {name: records[: args.items] for name, records in sets.items()}
    utility = world.utility_test[: args.items] if args.items else world.utility_test
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
