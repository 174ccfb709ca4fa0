"""Benchmark: the pipeline's compute stages at real model sizes, and the wall time of a SemEval-sized run.

    .venv/bin/python bench/scale.py --device cuda [--sizes olmo-1b,olmo-7b] [--mmlu ../shared/data/mmlu]
    .venv/bin/python bench/scale.py                      # CPU, toy size (what CI runs)

Models are random-initialised from the OLMo-1B and OLMo-7B configurations (no download: the config
alone; timing does not depend on what the weights learned) and each size runs in a fresh process, so
its peak memory is its own. Measured with the project's own code, not a stand-in:
- trace: `amnesia.science.tracing.causal.trace_fact` (hidden/MLP/attention, 10 noise samples, window 10) on demo-world
  QA prompts; seconds per fact.
- unlearn: the `sha256` method's trainer step on the MLPs of layers 0-5 (AdamW; fp32 master weights
  with bf16 autocast on CUDA, as `precision: auto` does); steps per second and peak memory.
- evaluate: `amnesia.science.generation.greedy_generate` on forget/retain prompts; items per second. Random
  weights never emit EOS, so every item runs the full `--new-tokens`: a worst case.
- MMLU: `amnesia.science.mmlu.score_mmlu` (letter format), k-shot; questions per second.
Inference (trace, evaluate, MMLU) runs in bf16 on CUDA, fp32 on CPU. Then it projects one pipeline run
from the workload flags (defaults below: check them against your data) on one device of this kind.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Architecture of the public OLMo checkpoints (allenai/OLMo-1B-0724-hf, allenai/OLMo-7B-0724-Instruct-hf).
SIZES: dict[str, dict[str, int]] = {
    "toy": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
            "vocab_size": 2048},
    "olmo-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16, "intermediate_size": 8192,
                "vocab_size": 50304},
    "olmo-7b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008,
                "vocab_size": 50304},
}  # fmt: skip


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Clock:
    """Wall time with the device drained first, so queued GPU work is counted where it belongs."""

    def __init__(self, device: str) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __enter__(self) -> Clock:
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def _peak_reset(cuda: bool) -> int:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    return _rss_kb("VmRSS:") * 1024


def _peak(cuda: bool) -> int:
    import torch

    return torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM:") * 1024


def measure(size: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import OlmoConfig, OlmoForCausalLM

    from amnesia.demo.base_model import train_tokenizer
    from amnesia.demo.world import WorldConfig, generate
    from amnesia.science.architecture import inspect_model
    from amnesia.science.generation import greedy_generate
    from amnesia.science.mmlu import score_mmlu
    from amnesia.science.tracing.causal import TraceOptions, trace_fact
    from amnesia.science.unlearning.data import PairedBatches, encode
    from amnesia.science.unlearning.methods import method_class
    from amnesia.science.unlearning.params import count, freeze_all_but, trainable_names
    from amnesia.stages.trace.stage import make_fact
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.stages.unlearn.trainer import HeldOut, Trainer
    from amnesia.storage.records import load_mmlu

    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    world = generate(WorldConfig())
    tok = train_tokenizer(world.training_texts(), 2048)
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    cfg = OlmoConfig(**SIZES[size], max_position_embeddings=4096, **special)
    infer_dtype = torch.bfloat16 if cuda else torch.float32
    with Clock(args.device) as build, torch.device(args.device):
        model = OlmoForCausalLM(cfg).to(infer_dtype).eval()
    layout = inspect_model(model)
    out: dict[str, Any] = {"size": size, "parameters": count(list(model.parameters())), "build_s": build.seconds}

    # trace
    subjects = [q["subject"] for q in world.requests]
    counts: Counter[str] = Counter()
    facts = [f for r in world.forget if r.kind == "qa" and (f := make_fact(tok, r, subjects, counts))]
    facts = facts[: args.facts + 1]
    # The trace stage's prefix_cache: auto (on for a CPU, off for a GPU).
    opts = TraceOptions(samples=10, noise_std=0.1, window=10, prefix_cache=not cuda)
    trace = lambda f: trace_fact(model, layout, f, opts)  # noqa: E731
    with torch.inference_mode():
        trace(facts[0])  # warm-up (kernels, allocator)
        with Clock(args.device) as t:
            for f in facts[1:]:
                trace(f)
    out["trace_s_per_fact"] = t.seconds / max(1, len(facts) - 1)
    out["trace_prompt_tokens"] = sum(len(f.ids) for f in facts) / len(facts)

    # evaluate: greedy generation
    prompts = [r.input for r in (world.forget + world.retain)][: args.items]
    greedy_generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=args.eval_batch)  # warm-up
    with Clock(args.device) as t:
        greedy_generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.eval_batch)
    out["evaluate_items_per_s"] = len(prompts) / t.seconds

    # MMLU (letter format)
    if args.mmlu:
        questions, dev = load_mmlu(args.mmlu, split="test"), load_mmlu(args.mmlu, split="dev")
    else:
        questions, dev = world.utility_test, world.utility_dev
    questions = questions[:: max(1, len(questions) // args.mmlu_questions)][: args.mmlu_questions]  # all subjects
    shots = args.shots
    with Clock(args.device) as t:
        score_mmlu(model, tok, questions, dev, shots, args.mmlu_batch)
    out["mmlu_questions_per_s"] = len(questions) / t.seconds
    out["mmlu_shots"] = shots

    # unlearn: sha256 on the MLPs of layers 0-5, fp32 master weights (+ bf16 autocast on CUDA)
    model = model.float().train()
    layers = list(range(min(6, layout.num_layers)))
    names = trainable_names(model, layout, "mlp", layers)
    params = freeze_all_but(model, names)
    ucfg = UnlearnConfig(layers=layers, batch_size=args.batch, epochs=1000, early_stop_forget_exact=None)
    data = PairedBatches([encode(tok, r) for r in world.forget], [encode(tok, r) for r in world.retain], args.batch,
                         0, tok.pad_token_id)  # fmt: skip
    method = method_class("sha256")(ucfg.method_config(), model, params, layers=layers)
    trainer = Trainer(ucfg, method, model, names, data, HeldOut([], [], []))
    base = _peak_reset(cuda)
    trainer.train_step(0)  # warm-up: allocates gradients and optimizer state
    with Clock(args.device) as t:
        for step in range(1, args.steps + 1):
            trainer.train_step(step)
    out |= {
        "unlearn_steps_per_s": args.steps / t.seconds,
        "unlearn_trainable": count(params),
        "unlearn_peak_bytes": _peak(cuda),
        "unlearn_model_bytes": base,
    }
    return out


def _child(size: str, args: argparse.Namespace, queue: Any) -> None:
    try:
        queue.put(measure(size, args))
    except Exception as err:  # reported by the parent, with the size it happened at
        queue.put({"size": size, "error": f"{type(err).__name__}: {err}"})


def project(row: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Seconds of one pipeline run at the workload flags, from the measured rates."""
    steps = args.epochs * math.ceil(args.forget_items / args.batch)
    return {
        "trace": args.traced_facts * row["trace_s_per_fact"],
        "unlearn": steps / row["unlearn_steps_per_s"],
        # base and candidate; a cached base evaluation costs nothing on later runs
        "evaluate": 2 * args.eval_items / row["evaluate_items_per_s"],
        "mmlu": 2 * args.mmlu_total / row["mmlu_questions_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default=None, help="comma list of " + ", ".join(SIZES) + " (default: toy on CPU)")
    ap.add_argument("--facts", type=int, default=3, help="facts timed per size (after one warm-up)")
    ap.add_argument("--steps", type=int, default=5, help="unlearning steps timed (after one warm-up)")
    ap.add_argument("--batch", type=int, default=16, help="forget (and retain) items per unlearning step")
    ap.add_argument("--items", type=int, default=64, help="items generated for the evaluate rate")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--mmlu", help="MMLU folder (cais/mmlu layout, e.g. ../shared/data/mmlu); else the demo set")
    ap.add_argument("--mmlu-questions", type=int, default=64)
    ap.add_argument("--mmlu-batch", type=int, default=16)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the rows and projections here")
    # The workload of one run: ASSUMED SemEval-2025 Task 4 scale; pass your own numbers.
    ap.add_argument("--forget-items", type=int, default=1100, help="forget items trained on")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--traced-facts", type=int, default=200, help="facts traced (trace.max_facts)")
    ap.add_argument("--eval-items", type=int, default=2500, help="forget + retain items evaluated per model")
    ap.add_argument("--mmlu-total", type=int, default=14042, help="MMLU questions per model (all of test)")
    args = ap.parse_args()
    sizes = (args.sizes or "toy").split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")

    ctx = mp.get_context("spawn")
    rows = []
    for size in sizes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(size, args, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()

    device = args.device
    if device.startswith("cuda"):
        import torch

        device = f"{device} ({torch.cuda.get_device_name(0)})"
    print(f"device {device}; trace 10 samples x window 10; unlearn sha256 on MLPs of layers 0-5, batch {args.batch}")
    head = f"{'size':<9}{'params':>8}{'trace s/fact':>14}{'unlearn step/s':>16}{'peak GiB':>10}"
    print(head + f"{'eval items/s':>14}{'MMLU q/s':>10}")
    gib = 1 / 2**30
    for r in rows:
        if "error" in r:
            print(f"{r['size']:<9} failed: {r['error']}")
            continue
        size, billions, peak = r["size"], r["parameters"] / 1e9, r["unlearn_peak_bytes"] * gib
        print(
            f"{size:<9}{billions:>7.2f}B{r['trace_s_per_fact']:>14.3f}{r['unlearn_steps_per_s']:>16.2f}{peak:>10.1f}"
            f"{r['evaluate_items_per_s']:>14.1f}{r['mmlu_questions_per_s']:>10.1f}"
        )
    print(
        f"projected run: {args.traced_facts} facts traced, {args.epochs} epochs over {args.forget_items} forget items, "
        f"{args.eval_items} items and {args.mmlu_total} MMLU questions per model, base + candidate (assumed workload)"
    )
    projections = {}
    for r in rows:
        if "error" in r:
            continue
        p = projections[r["size"]] = project(r, args)
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in p.items())
        print(f"{r['size']:<9} {sum(p.values()) / 60:7.1f} min on one device ({parts} min)")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows, "projections": projections}, indent=1))
    if any("error" in r for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
