"""Benchmark: every unlearning method side by side on the demo world, with the same split, the same traced
layers and the same budget, scored by the evaluate stage's own code (attacks included).

    .venv/bin/python bench/methods.py [--methods sha256,npo,...] [--json FILE] [--plot FILE]
    .venv/bin/python bench/methods.py --model random --items 6 --epochs 1   # seconds: the code path only

Budget: the demo's unlearning config (epochs, lr, batch, retain batch 32, early stop at 5 % of forget items
reproduced) with only the method swapped; sha256 (and sam+sha256) keep the demo's m range, the others run
their defaults. Per method: forget score, retain score (people unlearning trains on), held-out retain
score (people in neither set), MIA score, utility (the demo's MMLU-format set), final (the official mean
of task aggregate, MIA and utility), the worst recovery under 4-bit quantization (sym and asym) and under
relearning (RTT: 5 folds, 20 steps), steps and wall time. A recovery is the share of what unlearning
removed that the attack brings back (0 when nothing was removed). Each candidate also goes through the
demo's gate (`demo_gate_config()`): the table says which checks it fails, and `--reports DIR` writes
each method's gate report (HTML + Markdown, with its attack table and recovery plot) as the pipeline does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import demo_arguments, demo_setup, evaluation, traced_layers, unlearn  # noqa: E402

from amnesia.demo.prepare import demo_gate_config, demo_trace_config, demo_unlearn_config  # noqa: E402
from amnesia.results.evaluation import Evaluation  # noqa: E402
from amnesia.results.figures import comparisons, scores  # noqa: E402
from amnesia.results.gate import Verdict
from amnesia.science.attack_config import AttackConfig, QuantizationAttackConfig, RelearningAttackConfig  # noqa: E402
from amnesia.science.unlearning.methods import METHODS  # noqa: E402
from amnesia.stages.gate.stage import decide  # noqa: E402
from amnesia.stages.unlearn.config import UnlearnConfig  # noqa: E402

DEFAULT = [*sorted(METHODS), "sam+npo", "sam+sha256"]
COLUMNS = ("forget", "retain", "held_out", "mia", "utility", "final", "quant4_recovery", "rtt_recovery")


def config_for(
    method: str, base: UnlearnConfig, layers: list[int], epochs: int | None, extra: dict[str, Any] | None = None
) -> UnlearnConfig:
    """The demo budget with this method: sha256's demo m range carries over to its SAM wrapper and to UNDO's
    unlearning phase; chunked draws its retain batch from its ratio (2 × 16 = the demo's 32)."""
    args = dict(base.method_args) if method.removesuffix("sha256") in ("", "sam+") else {}
    if method == "undo":  # the demo's sha256 unlearns, then UNDO noises and distils
        args = {"inner": "sha256", "inner_args": dict(base.method_args)}
    update: dict[str, Any] = {"method": method, "method_args": args | (extra or {}), "layers": layers}
    if method.endswith("chunked"):
        update["retain_batch_size"] = None
    if epochs:
        update["epochs"] = epochs
    return UnlearnConfig.model_validate(base.model_dump() | update)


def row(
    name: str, ev: Evaluation, base: Evaluation | None, steps: int, seconds: float, verdict: Verdict | None
) -> dict[str, Any]:
    s = scores(ev)
    c = comparisons(base, ev) if base is not None else {}
    failed = [ch.name for ch in verdict.checks if not ch.passed] if verdict else []
    return {
        "method": name, "steps": steps, "seconds": seconds,
        "gate": "" if verdict is None else "PASS" if verdict.passed else "FAIL: " + ", ".join(failed),
        "forget": s["forget_score"], "retain": s["retain_score"], "held_out": s["held_out_retain_score"],
        "mia": s.get("mia_score"), "utility": s.get("mmlu"), "final": s.get("final"),
        "quant4_recovery": c.get("quantization_recovery"), "rtt_recovery": c.get("relearning_recovery"),
        # each gate check's margin: how far it clears its bound (negative: it fails), in the figure's units
        "margins": {ch.name: _margin(ch.value, ch.floor, ch.ceiling) for ch in verdict.checks} if verdict else {},
    }  # fmt: skip


def _margin(value: float | None, bound: float, ceiling: bool) -> float | None:
    return None if value is None else (bound - value if ceiling else value - bound)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(DEFAULT), help="comma-separated registered methods")
    ap.add_argument("--reports", type=Path, help="write each method's gate report into this folder")
    ap.add_argument("--seeds", type=int, default=1, help="runs per method (seeds 0..n-1): the spread is the noise")
    ap.add_argument("--search", type=int, metavar="TRIALS",
                    help="search each method's settings first (unlearn.search, this many trials, seed 0; the "
                         "attacks on the best --attack-top), then run its chosen settings with each seed")
    ap.add_argument("--attack-top", type=int, default=1, help="with --search: trials the attacks run on")
    ap.add_argument("--args", action="append", default=[], metavar="METHOD=JSON",
                    help="method_args for METHOD over the bench's own, e.g. 'undo={\"alpha\": 0.5}' (repeatable)")
    demo_arguments(ap)
    args = ap.parse_args()
    d = demo_setup(args)
    world, sets, mia, base, tok, utility = d.world, d.sets, d.mia, d.base, d.tok, d.utility
    layers = traced_layers(base, tok, sets, [q["subject"] for q in world.requests]) or list(
        range(demo_trace_config().k)
    )
    attacks = AttackConfig(quantization=QuantizationAttackConfig(bits=[4]), relearning=RelearningAttackConfig())
    t0 = time.perf_counter()
    base_ev = evaluation(base, tok, sets, mia, utility, "base", attacks)
    print(f"base model evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [row("base model", base_ev, None, 0, 0.0, None) | {"seed": 0}]
    demo = demo_unlearn_config()
    given = {m: json.loads(a) for m, _, a in (x.partition("=") for x in args.args)}
    for method in args.methods.split(","):
        chosen: dict[str, Any] = {}
        if args.search:
            cfg = config_for(method, demo, layers, args.epochs, given.get(method))
            chosen = searched(args, method, cfg, d, base_ev, attacks)
        for seed in range(args.seeds):  # the unlearning's data order and the relearning folds
            cfg = config_for(method, demo, layers, args.epochs, given.get(method))
            cfg = (cfg.with_settings(chosen["params"]) if chosen else cfg).model_copy(update={"seed": seed})
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            model, steps = unlearn(base, tok, sets, cfg)
            seconds = time.perf_counter() - t0
            seeded = attacks.model_copy(update={"relearning": attacks.relearning.model_copy(update={"seed": seed})})
            ev = evaluation(model, tok, sets, mia, utility, method, seeded)
            verdict = decide(demo_gate_config(), base_ev, ev)
            rows.append(row(method, ev, base_ev, steps, seconds, verdict) | {"seed": seed, "search": chosen})
            if args.reports and seed == 0:
                _report(args.reports / method.replace("+", "-"), method, cfg, base_ev, ev, verdict)
            print(f"  {method} (seed {seed}): {steps} steps in {seconds:.0f} s", flush=True)
            del model

    n_forget = len(sets["forget_train"]) + len(sets["forget_eval"])
    print(f"\nmethods on the demo world: layers {layers}, {args.epochs or demo.epochs} epochs max with early stop, "
          f"lr {demo.lr}, {n_forget} forget items, {len(sets['retain_train'])} retain, "
          f"{len(sets['retain_eval'])} held-out retain{f'; {args.seeds} seeds' if args.seeds > 1 else ''}")  # fmt: skip
    head = f"{'method':<14}{'steps':>6}{'secs':>6}" + "".join(f"{c.replace('_recovery', ' rec'):>11}" for c in COLUMNS)
    print(head)
    for r in rows if args.seeds == 1 else [r for r in rows if r["seed"] == 0]:
        cells = "".join(f"{_fmt(r[c]):>11}" for c in COLUMNS)
        print(f"{r['method']:<14}{r['steps']:>6}{r['seconds']:>6.0f}{cells}  {r['gate']}")
    if args.seeds > 1:
        _spread(rows)
    if args.json:
        args.json.write_text(json.dumps({"layers": layers, "rows": rows}, indent=1))
    if args.plot:
        _plot(rows, args.plot)


def searched(
    args: argparse.Namespace, method: str, cfg: UnlearnConfig, d: Any, base_ev: Evaluation, attacks: AttackConfig
) -> dict[str, Any]:
    """The settings search for one method, on the demo's sets, scored by the demo gate: its chosen settings,
    the trial count and its cost."""
    import logging
    import tempfile

    from common import _Log, prepared

    from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
    from amnesia.stages.evaluate.stage import evaluate_model
    from amnesia.stages.search.stage import Search

    cfg = UnlearnConfig.model_validate(cfg.model_dump() | {"search": {"trials": args.search,
                                                                      "attack_top": args.attack_top}})  # fmt: skip
    prep = prepared(d.base, d.tok, d.sets, cfg)
    full = EvaluateConfig(max_new_tokens=64, mmlu=MMLUConfig(uri="demo-utility", shots=0), attacks=attacks)
    plain = full.model_copy(update={"attacks": None})
    groups = {"forget": d.sets["forget_train"] + d.sets["forget_eval"], "retain": d.sets["retain_train"],
              "retain_held_out": d.sets["retain_eval"]}  # fmt: skip
    identity = {"model_uri": "trial", "model_digest": None, "uri": "", "key": None}

    def score(model: Any, attacked: bool) -> Any:
        return evaluate_model(full if attacked else plain, model, d.tok, groups, d.mia, d.utility, [], "trial",
                              _Log(), identity)  # fmt: skip

    log = logging.getLogger("bench.search")
    t0 = time.perf_counter()
    search = Search(cfg, prep, score, base_ev, demo_gate_config(), None, log, evaluate_cfg=full,
                    forget_records=groups["forget"])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trials, number, _stopped = search.run(None, Path(tmp))
    best = next(t for t in trials if t.number == number)
    seconds = time.perf_counter() - t0
    pruned = sum(t.state == "pruned" for t in trials)
    passing = sum(bool(t.passed) for t in trials)
    margin = best.attacked_margin if best.attacked_margin is not None else best.margin
    print(f"  {method}: search {len(trials)} trials ({pruned} pruned, {passing} passed) in {seconds:.0f} s; chose "
          f"{best.params}, margin {margin:+.3f}", flush=True)  # fmt: skip
    del prep
    return {"params": best.params, "trials": len(trials), "pruned": pruned, "passed": passing,
            "seconds": round(seconds, 1), "margin": margin}  # fmt: skip


def _spread(rows: list[dict[str, Any]]) -> None:
    """Per method over its seeds: the mean and the range of each column, and how often the gate passed."""
    print("\nover seeds: mean [min..max]")
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "base model"):
        runs = [r for r in rows if r["method"] == method]
        cells = []
        for c in COLUMNS:
            vals = [r[c] for r in runs if r[c] is not None]
            cells.append(f"{c} {np.mean(vals):.3f} [{min(vals):.3f}..{max(vals):.3f}]" if vals else f"{c} –")
        passed = sum(r["gate"] == "PASS" for r in runs)
        print(f"{method:<14}" + "  ".join(cells) + f"  gate PASS {passed}/{len(runs)}")
        for check in runs[0]["margins"]:  # the noise is the seeds' standard deviation of the margin
            vals = [r["margins"][check] for r in runs if r["margins"].get(check) is not None]
            if len(vals) > 1:
                noise = float(np.std(vals, ddof=1))
                ratio = f"{np.mean(vals) / noise:.1f}× noise" if noise > 0 else "no spread"
                print(f"{'':<14}{check:<32} margin {np.mean(vals):+.3f} [{min(vals):+.3f}..{max(vals):+.3f}], "
                      f"sd {noise:.3f}: {ratio}")


def _report(folder: Path, method: str, cfg: UnlearnConfig, base: Evaluation, ev: Evaluation, verdict: Verdict) -> None:
    """The gate's report for this candidate, with the recovery plot (no trace heatmaps or curves here)."""
    import tempfile

    from amnesia.stages.gate import report
    from amnesia.stages.gate.stage import recovery_plot

    with tempfile.TemporaryDirectory() as tmp:
        plot = recovery_plot(demo_gate_config(), base, ev, Path(tmp) / "recovery.png")
        images = {"Attacks: recovery": plot} if plot else {}
        facts = [("method", f"{method} on {cfg.target} of layers {cfg.layers} (bench/methods.py, demo budget)")]
        report.write(report.ReportInputs(f"bench-{method}", base, ev, verdict, images, facts), folder)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: what each method keeps and removes (higher is better); right: what the attacks bring back
    (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = ("forget", "retain", "held_out", "utility", "final")
    bad = ("quant4_recovery", "rtt_recovery")
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(rows))
    panels = ((left, good, "scores (higher is better)"), (right, bad, "attack recovery (lower is better)"))
    for ax, keys, title in panels:
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ax.bar(x + i * width, [r[key] or 0.0 for r in rows], width, label=key.replace("_recovery", ""))
        ax.set_xticks(x + 0.4 - width / 2, [r["method"] for r in rows], rotation=40, ha="right")
        ax.set_ylim(0, 1.25)  # headroom for the legend
        ax.set_title(title)
        ax.legend(ncol=len(keys), loc="upper center", fontsize=8)
    fig.suptitle("Unlearning methods on the demo world (same split, layers and budget)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
