"""Benchmark: compliance over time. The demo world's erasure requests arrive in monthly batches; each month a
new version is made under one of three strategies, and every version is scored on every batch so far.

    .venv/bin/python bench/continual.py [--batches 6] [--strategies naive,incremental,cumulative]
                                        [--json FILE] [--plot FILE]
    .venv/bin/python bench/continual.py --model random --items 4 --batches 2 --epochs 1   # the code path only

Strategies (amnesia.runtime.plan):
- naive: what the pipeline did before standing obligations: each month from the original model, this
  month's requests only, and everyone forgotten before back in the retain set;
- incremental: from the last version, this month's requests, earlier people kept out of retain;
- cumulative: from the original model, every request so far.

Per version: the forget score of each batch's people (1 = nothing remembered); the retain and held-out retain
scores of the people in no request, as a share of the original model's; utility (the demo's MMLU-format
set) as a share of the original's; the weight drift from the original (relative L2 of the trained
tensors); the gate's verdict (the demo gate without its two attacks, plus the per-request floor on every
earlier request, as the pipeline's gate checks them); and the wall time (unlearning and scoring). The same
traced layers and the demo's unlearning config serve every version. Output: a table, JSON, and one plot of
batches × versions per strategy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Sets, _Log, base_model, evaluation, traced_layers, unlearn  # noqa: E402

from amnesia.demo.prepare import demo_gate_config, demo_unlearn_config  # noqa: E402
from amnesia.demo.world import WorldConfig, generate  # noqa: E402
from amnesia.results.plan import ObligationRef, RunPlan  # noqa: E402
from amnesia.science.metrics.aggregate import per_task  # noqa: E402
from amnesia.science.metrics.registry import forget_score, retain_score  # noqa: E402
from amnesia.science.mmlu import score_mmlu  # noqa: E402
from amnesia.science.records import UnlearningRecord  # noqa: E402
from amnesia.stages.evaluate.config import EvaluateConfig  # noqa: E402
from amnesia.stages.evaluate.stage import score_items  # noqa: E402
from amnesia.stages.gate.stage import decide  # noqa: E402
from amnesia.stages.split.config import SplitConfig  # noqa: E402
from amnesia.stages.split.stage import build_sets, request_documents  # noqa: E402
from amnesia.storage.obligations import person_scores  # noqa: E402

STRATEGIES = ("naive", "incremental", "cumulative")


def batches(items: list[Any], n: int) -> list[list[Any]]:
    size, extra = divmod(len(items), n)
    out, at = [], 0
    for b in range(n):
        out.append(items[at : at + size + (b < extra)])
        at += size + (b < extra)
    return out


class World:
    """The demo world on disk, split by the split stage's own code for any set of requests."""

    def __init__(self, folder: Path, requests: list[dict[str, Any]], items: int | None) -> None:
        self.folder, self.items = folder, items
        self.requests = requests

    def split(self, requests: list[dict[str, Any]], plan: RunPlan | None, whole: bool = False) -> Sets:
        path = self.folder / f"requests-{len(requests)}-{hash(tuple(r['request_id'] for r in requests))}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests))
        cfg = SplitConfig(corpus=str(self.folder / "corpus.jsonl"), requests=str(path))
        ctx = type("Ctx", (), {"store": None, "root": str(self.folder), "log": _Log()})()
        sets, _mia, _r, _w = build_sets(cfg, ctx, plan)  # type: ignore[arg-type]
        return {k: v[: self.items] for k, v in sets.items()} if self.items and not whole else sets


def _score(model: Any, tok: Any, records: list[UnlearningRecord]) -> list[float]:
    return score_items(model, tok, records, EvaluateConfig(max_new_tokens=64))[1] if records else []


def _drift(model: Any, base: Any) -> float:
    """Relative L2 distance from the original over every tensor that changed."""
    num = den = 0.0
    for (_n, p), (_m, q) in zip(model.named_parameters(), base.named_parameters(), strict=True):
        d = float((p.detach() - q.detach()).pow(2).sum())
        if d:
            num, den = num + d, den + float(q.detach().pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    world = generate(WorldConfig())
    base, tok = base_model(args.model, world)
    tmp = Path(tempfile.mkdtemp(prefix="continual-"))
    world.write(tmp)
    w = World(tmp, world.requests, args.items)
    everyone = w.split(world.requests, None, whole=True)  # all requests: the people in none are the fixed retain
    forget_all = everyone["forget_train"] + everyone["forget_eval"]
    docs_of = request_documents([_req(r) for r in world.requests], forget_all, SplitConfig(corpus="x", requests="x"))
    months = batches(world.requests, args.batches)
    people = [[rec for r in m for rec in forget_all if rec.document_id in docs_of[r["request_id"]]][: args.items]
              for m in months]  # fmt: skip
    retain, held = everyone["retain_train"][: args.items], everyone["retain_eval"][: args.items]
    subjects = [r["subject"] for r in world.requests]
    layers = traced_layers(base, tok, everyone, subjects) or [1, 2]
    budget = {"epochs": args.epochs} if args.epochs else {}
    cfg = demo_unlearn_config().model_copy(update={"layers": layers, **budget})
    gate_cfg = demo_gate_config().model_copy(update={"quantization_recovery_ceiling": None,
                                                     "relearning_recovery_ceiling": None})  # fmt: skip
    utility = world.utility_test[: args.items] if args.items else world.utility_test
    original = _figures(base, tok, people, retain, held, utility)
    rows: list[dict[str, Any]] = []
    for strategy in args.strategies:
        model = base
        for v in range(1, len(months) + 1):
            t0 = time.monotonic()
            earlier = [r for m in months[: v - 1] for r in m]
            now = months[v - 1] if strategy != "cumulative" else [r for m in months[:v] for r in m]
            plan = None
            if strategy == "incremental":
                plan = RunPlan.none("bench", "original").model_copy(update={
                    "mode": "incremental",  # earlier documents out of retain (ids: no queue here)
                    "earlier_documents": sorted({d for r in earlier for d in docs_of[r["request_id"]]})})  # fmt: skip
            sets = w.split(now, plan)
            start = model if strategy == "incremental" else base
            model, steps = unlearn(start, tok, sets, cfg)
            trained = time.monotonic() - t0
            got = _figures(model, tok, people[:v], retain, held, utility)
            verdict = _gate(gate_cfg, base, model, tok, sets, utility, earlier, docs_of, forget_all, args.items)
            rows.append({
                "strategy": strategy, "version": v, "steps": steps, "layers": layers,
                "batch_forget": got["batch_forget"],
                "retain_rel": _rel(got["retain"], original["retain"]),
                "held_out_rel": _rel(got["held_out"], original["held_out"]),
                "utility_rel": _rel(got["utility"], original["utility"]),
                "drift": _drift(model, base), "gate": verdict,
                "seconds_unlearn": round(trained, 1), "seconds": round(time.monotonic() - t0, 1),
            })  # fmt: skip
            print(_line(rows[-1]), flush=True)
    return {"batches": [len(m) for m in months], "original": original, "rows": rows, "layers": layers}


def _req(r: dict[str, Any]) -> Any:
    from amnesia.storage.requests import ErasureRequest

    return ErasureRequest.model_validate(r)


def _rel(x: float, base: float) -> float:
    return x / base if base else 0.0


def _figures(model: Any, tok: Any, people: list[list[UnlearningRecord]], retain: list[UnlearningRecord],
             held: list[UnlearningRecord], utility: list[Any]) -> dict[str, Any]:  # fmt: skip
    """Each batch's forget score, the fixed retain and held-out retain scores, utility."""
    out: dict[str, Any] = {"batch_forget": []}
    for records in people:
        values = _score(model, tok, records)
        tasks = per_task((r.task, r.kind, x) for r, x in zip(records, values, strict=True))
        out["batch_forget"].append(forget_score(tasks) or 0.0)
    for name, records in (("retain", retain), ("held_out", held)):
        values = _score(model, tok, records)
        out[name] = retain_score(per_task((r.task, r.kind, x) for r, x in zip(records, values, strict=True))) or 0.0
    out["utility"] = score_mmlu(model, tok, utility, [], 0, 32).accuracy if utility else 0.0
    return out


def _gate(cfg: Any, base: Any, model: Any, tok: Any, sets: Sets, utility: list[Any], earlier: list[dict[str, Any]],
          docs_of: dict[str, list[str]], forget_all: list[UnlearningRecord], items: int | None) -> str:  # fmt: skip
    """The pipeline's decide(): this version's sets against the original, and every earlier request per person."""
    b = evaluation(base, tok, sets, {}, utility, "base", None)
    c = evaluation(model, tok, sets, {}, utility, "candidate", None)
    refs, figures = [], {}
    for r in earlier:
        mine = [rec for rec in forget_all if rec.document_id in docs_of[r["request_id"]]][:items]
        values = _score(model, tok, mine)
        figures[r["request_id"]] = person_scores([(rec.kind, x) for rec, x in zip(mine, values, strict=True)])
        refs.append(ObligationRef(request_id=r["request_id"], documents=docs_of[r["request_id"]], items=len(mine),
                                  fulfilled_by="earlier"))  # fmt: skip
    plan = RunPlan.none("bench", "original").model_copy(update={"obligations": refs})
    verdict = decide(cfg.model_copy(update={"mia_floor": None}), b, c.model_copy(update={"obligations": figures}), plan)
    failed = [ch.name for ch in verdict.checks if not ch.passed]
    people = [n for n in failed if n.startswith("obligation.")]
    rest = [n for n in failed if not n.startswith("obligation.")]
    if verdict.passed:
        return "PASS"
    return "FAIL: " + ", ".join(rest + ([f"{len(people)} earlier requests"] if people else []))


def _line(r: dict[str, Any]) -> str:
    forget = " ".join(f"{x:.2f}" for x in r["batch_forget"])
    return (f"{r['strategy']:<12} v{r['version']}  forget by batch [{forget}]  retain {r['retain_rel']:.2f}  "
            f"held-out {r['held_out_rel']:.2f}  utility {r['utility_rel']:.2f}  drift {r['drift']:.3f}  "
            f"{r['seconds']:>5.0f}s  {r['gate']}")  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    """One panel per strategy: each version's forget score on each batch so far (batches × versions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = list(dict.fromkeys(r["strategy"] for r in result["rows"]))
    n = len(result["batches"])
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.4 * len(strategies), 3.8), squeeze=False)
    for i, (ax, strategy) in enumerate(zip(axes[0], strategies, strict=True)):
        grid = np.full((n, n), np.nan)
        rows = [r for r in result["rows"] if r["strategy"] == strategy]
        for r in rows:
            for b, x in enumerate(r["batch_forget"]):
                grid[b, r["version"] - 1] = x
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="upper")
        verdicts = {r["version"]: "pass" if r["gate"] == "PASS" else "FAIL" for r in rows}
        for r in rows:
            for b, x in enumerate(r["batch_forget"]):
                ax.text(r["version"] - 1, b, f"{x:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(strategy)
        ax.set_xticks(range(n), [f"v{v + 1}\n{verdicts.get(v + 1, '')}" for v in range(n)], fontsize=8)
        ax.set_yticks(range(n), [f"batch {b + 1}" for b in range(n)] if i == 0 else [""] * n, fontsize=8)
        ax.set_xlabel("version, and its gate")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="forget score (1 = forgotten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo (the trained demo base model) or random (untrained)")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--strategies", type=lambda s: s.split(","), default=list(STRATEGIES))
    ap.add_argument("--epochs", type=int, help="unlearning epochs (default: the demo config's)")
    ap.add_argument("--items", type=int, help="at most this many items per set (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad:
        ap.error(f"--strategies: unknown {bad[0]!r} (one of {', '.join(STRATEGIES)})")
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        print(f"plot: {plot(result, args.plot)}")


if __name__ == "__main__":
    main()
