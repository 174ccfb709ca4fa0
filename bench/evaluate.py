"""Benchmark: batched evaluation (amnesia.stages.evaluate.stage) against a one-by-one loop like the official scorer's
(one prompt per generate call, one document per forward, one question per forward), on the same model
and items, in one run. Prints each path's time, the speed-up, and whether every metric is equal.

    .venv/bin/python bench/evaluate.py [--items 64] [--max-new-tokens 32] [--device cpu|cuda] [--model PATH]

Without --model it uses the demo architecture (random weights: generation then runs to max_new_tokens,
the slow case) on the demo world's items, MIA documents and utility questions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer  # noqa: E402
from amnesia.demo.world import WorldConfig, generate  # noqa: E402
from amnesia.science.generation import greedy_generate  # noqa: E402
from amnesia.science.metrics.aggregate import mia_auc, per_task  # noqa: E402
from amnesia.science.metrics.items import item_score  # noqa: E402
from amnesia.science.mmlu import score_mmlu  # noqa: E402
from amnesia.stages.evaluate.stage import document_losses  # noqa: E402


def run(model, tok, items, docs, questions, args, batch: int) -> tuple[float, dict[str, object]]:  # type: ignore[no-untyped-def]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gens = greedy_generate(model, tok, [r.input for r in items], args.max_new_tokens, batch_size=batch)
    scores = [item_score(r.kind, g, r.output) for r, g in zip(items, gens, strict=True)]
    losses = document_losses(model, tok, [d.document for d in docs], batch_size=batch)
    mmlu = score_mmlu(model, tok, questions, [], shots=0, batch=batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    half = len(losses) // 2
    return seconds, {
        "generations": gens,
        "per_task": per_task((r.task, r.kind, s) for r, s in zip(items, scores, strict=True)),
        "losses": losses,
        "mia_auc": mia_auc(losses[:half], losses[half:]),
        "mmlu": mmlu.accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="a model folder instead of the demo architecture")
    args = ap.parse_args()

    world = generate(WorldConfig())
    if args.model:
        from amnesia.storage.models import load_model

        loaded = load_model(args.model, device=args.device)
        model, tok = loaded.model, loaded.tokenizer
    else:
        tok = train_tokenizer(world.training_texts(), 2048)
        torch.manual_seed(0)
        model = build_model(TrainConfig(), tok).to(args.device)
    model.eval()
    items = (world.forget + world.retain)[:: max(1, len(world.forget + world.retain) // args.items)][: args.items]
    docs = (world.mia_members + world.mia_nonmembers)[: 2 * (args.items // 4)]
    questions = world.utility_test[: args.items]
    print(f"{len(items)} items (max {args.max_new_tokens} new tokens), {len(docs)} MIA documents, "
          f"{len(questions)} utility questions on {args.device}; torch threads {torch.get_num_threads()}")  # fmt: skip
    slow, ref = run(model, tok, items, docs, questions, args, batch=1)
    fast, got = run(model, tok, items, docs, questions, args, batch=args.batch)
    print(f"one by one (official-scorer style): {slow:.1f} s")
    print(f"batched ({args.batch} per forward):          {fast:.1f} s")
    print(f"speed-up: {slow / fast:.2f}x")
    same_gens = sum(a == b for a, b in zip(ref["generations"], got["generations"], strict=True))  # type: ignore[arg-type]
    loss_diff = max(abs(a - b) for a, b in zip(ref["losses"], got["losses"], strict=True))  # type: ignore[arg-type]
    equal = same_gens == len(items) and ref["per_task"] == got["per_task"] and ref["mmlu"] == got["mmlu"]
    equal = equal and ref["mia_auc"] == got["mia_auc"]
    tasks_equal = ref["per_task"] == got["per_task"]
    print(f"generations identical: {same_gens}/{len(items)}; per-task metrics equal: {tasks_equal}; "
          f"MIA AUC {ref['mia_auc']:.4f} vs {got['mia_auc']:.4f} (max |loss difference| {loss_diff:.1e}); "
          f"MMLU {ref['mmlu']:.4f} vs {got['mmlu']:.4f}")  # fmt: skip
    print(f"every metric equal: {equal}")


if __name__ == "__main__":
    main()
