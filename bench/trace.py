"""Benchmark: batched causal tracing (amnesia.tracing) against the plain one-restoration-per-forward
reference (tests/reference_trace.py), on the same model and facts, in one run.

    .venv/bin/python bench/trace.py [--facts 8] [--device cpu|cuda] [--model PATH]

Without --model it uses the demo architecture (6-layer, 128-wide OLMo, random weights: timing does
not depend on training) on prompts from the demo world. Prints per-method time, the speed-up, and the
largest difference between the two methods' scores (must stay below 1e-5).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.arch import inspect_model  # noqa: E402
from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer  # noqa: E402
from amnesia.demo.world import WorldConfig, generate  # noqa: E402
from amnesia.trace import make_fact  # noqa: E402
from amnesia.tracing import trace_fact  # noqa: E402
from tests.reference_trace import reference_trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="a model folder to use instead of the demo architecture")
    args = ap.parse_args()

    world = generate(WorldConfig())
    if args.model:
        from amnesia.models import load_model

        loaded = load_model(args.model)
        model, tok = loaded.model, loaded.tokenizer
    else:
        tok = train_tokenizer(world.training_texts(), 2048)
        model = build_model(TrainConfig(), tok)
    model = model.to(args.device).eval()
    layout = inspect_model(model)
    subjects = [q["subject"] for q in world.requests]
    counts: Counter[str] = Counter()
    facts = [f for r in world.forget if r.kind == "qa" and (f := make_fact(tok, r, subjects, counts))][: args.facts]
    print(
        f"model {type(model).__name__} ({layout.num_layers} layers) on {args.device}; {len(facts)} facts, "
        f"{args.samples} samples, window {args.window}; torch threads {torch.get_num_threads()}"
    )

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def batched(prefix_cache: bool) -> tuple[float, list]:  # type: ignore[type-arg]
        trace_fact(
            model, layout, facts[0], samples=args.samples, noise_std=0.2, window=args.window, prefix_cache=prefix_cache
        )  # warm-up
        sync()
        t0 = time.perf_counter()
        out = [
            trace_fact(
                model, layout, f, samples=args.samples, noise_std=0.2, window=args.window, prefix_cache=prefix_cache
            )
            for f in facts
        ]
        sync()
        return time.perf_counter() - t0, out

    t_fast, fast = batched(prefix_cache=True)
    t_plain, plain = batched(prefix_cache=False)
    t0 = time.perf_counter()
    ref = [
        reference_trace(model, layout, f, ("hidden", "mlp", "attn"), args.samples, 0.2, args.window, 0) for f in facts
    ]
    sync()
    t_ref = time.perf_counter() - t0
    diff = max(
        float(np.abs(a.scores[k] - b[1][k]).max())
        for run in (fast, plain)
        for a, b in zip(run, ref, strict=True)
        for k in b[1]
    )
    print(f"reference (one restoration per forward): {t_ref:8.2f} s  ({t_ref / len(facts):.3f} s/fact)")
    print(
        f"batched, whole prompt per row:           {t_plain:8.2f} s  ({t_plain / len(facts):.3f} s/fact)"
        f"  {t_ref / t_plain:5.1f}x"
    )
    print(
        f"batched + shared prefix KV cache:        {t_fast:8.2f} s  ({t_fast / len(facts):.3f} s/fact)"
        f"  {t_ref / t_fast:5.1f}x"
    )
    print(f"speed-up: {t_ref / t_fast:.1f}x   max |score difference|: {diff:.2e}")
    if diff > 1e-5:
        raise SystemExit("the two methods disagree beyond 1e-5")


if __name__ == "__main__":
    main()
