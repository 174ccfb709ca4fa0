"""What the benchmarks on the demo world share: its sets as the split stage makes them, the trace stage's
layer choice, the unlearn stage's training on an in-memory copy, and the evaluation's scores. The
pipeline's own functions, on local files instead of S3; bench/layers.py and bench/methods.py use them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.demo.prepare import demo_trace_config, local_base_model  # noqa: E402
from amnesia.demo.world import World, WorldConfig, generate  # noqa: E402
from amnesia.results.evaluation import Evaluation  # noqa: E402
from amnesia.science.architecture import inspect_model  # noqa: E402
from amnesia.science.attack_config import AttackConfig  # noqa: E402
from amnesia.science.metrics.aggregate import per_task  # noqa: E402
from amnesia.science.metrics.registry import forget_score, retain_score  # noqa: E402
from amnesia.science.mmlu import score_mmlu  # noqa: E402
from amnesia.science.records import MIADocument, UnlearningRecord  # noqa: E402
from amnesia.science.unlearning.data import encode  # noqa: E402
from amnesia.science.unlearning.methods import method_class  # noqa: E402
from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
from amnesia.stages.evaluate.stage import evaluate_model, score_items
from amnesia.stages.split.config import SplitConfig
from amnesia.stages.split.stage import build_sets  # noqa: E402
from amnesia.stages.trace.stage import TraceError, confirmed_choice, decide_layers, select_facts, trace_facts  # noqa: E402
from amnesia.stages.unlearn.config import UnlearnConfig  # noqa: E402
from amnesia.stages.unlearn.stage import Prepared, select_trainable, trainer_for  # noqa: E402
from amnesia.storage.models import load_model  # noqa: E402
from amnesia.storage.records import load_records

Sets = dict[str, list[UnlearningRecord]]


def base_model(kind: str, world: World) -> tuple[Any, Any]:
    """demo: the trained demo base model (cached in ~/.cache/amnesia/models); random: its architecture,
    untrained (seconds: the code path only)."""
    if kind == "random":
        from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer

        tok = train_tokenizer(world.training_texts(), 2048)
        return build_model(TrainConfig(), tok).eval(), tok
    loaded = load_model(str(local_base_model()))
    return loaded.model.eval(), loaded.tokenizer


def demo_sets(world: World, items: int | None = None) -> tuple[Sets, dict[str, list[MIADocument]]]:
    """The split stage's sets (and MIA documents), from the demo world's files; at most `items` per set."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        world.write(Path(tmp))
        sets, mia = _sets(Path(tmp))
    if items:
        sets = {name: records[:items] for name, records in sets.items()}
        mia = {name: docs[:items] for name, docs in mia.items()}
    return sets, mia


def world_and_sets(items: int | None = None) -> tuple[World, Sets, dict[str, list[MIADocument]]]:
    world = generate(WorldConfig())
    return (world, *demo_sets(world, items))


def demo_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every demo-world benchmark takes."""
    ap.add_argument("--model", default="demo", help="demo (the trained demo base model) or random (untrained)")
    ap.add_argument("--epochs", type=int, help="unlearning epochs (default: the demo config's)")
    ap.add_argument("--items", type=int, help="at most this many items per set (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the table here")
    ap.add_argument("--plot", type=Path, help="save a chart of the table here (PNG)")


@dataclass
class Demo:
    world: World
    sets: Sets
    mia: dict[str, list[MIADocument]]
    base: Any
    tok: Any
    utility: list[Any]  # the demo's MMLU-format questions


def demo_setup(args: argparse.Namespace) -> Demo:
    torch.set_num_threads(args.threads)
    world, sets, mia = world_and_sets(args.items)
    base, tok = base_model(args.model, world)
    utility = world.utility_test[: args.items] if args.items else world.utility_test
    return Demo(world, sets, mia, base, tok, utility)


class _Log:
    def info(self, *_a: object) -> None: ...

    def warning(self, *_a: object) -> None: ...


def _sets(world_dir: Path) -> tuple[Sets, dict[str, list[MIADocument]]]:
    """The split stage's sets, from the demo world's files (its own validation and assignment)."""
    cfg = SplitConfig(
        corpus=str(world_dir / "corpus.jsonl"), requests=str(world_dir / "requests.jsonl"),
        mia_members=str(world_dir / "mia" / "member.jsonl"), mia_nonmembers=str(world_dir / "mia" / "nonmember.jsonl"),
    )  # fmt: skip
    ctx = type("Ctx", (), {"store": None, "root": str(world_dir), "log": _Log()})()
    sets, mia, _requests, _warnings = build_sets(cfg, ctx)  # type: ignore[arg-type]
    return sets, mia


def traced_layers(model: Any, tok: Any, sets: Sets, subjects: list[str]) -> list[int] | None:
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


def prepared(base: Any, tok: Any, sets: Sets, cfg: UnlearnConfig) -> Prepared:
    """The unlearn stage's Prepared for a copy of the base model (what a settings search's trials share)."""
    model = copy.deepcopy(base)
    layers = cfg.layers or []
    names = select_trainable(model, cfg, layers)
    eos = {n: cfg.forget_eos if n.startswith("forget") else cfg.retain_eos for n in sets}
    enc = {n: [encode(tok, r, cfg.prompt_format, cfg.max_length, eos[n]) for r in rs] for n, rs in sets.items()}
    cls = method_class(cfg.method)
    extra = {
        k: [encode(tok, r, cfg.prompt_format, cfg.max_length, cfg.retain_eos) for r in load_records(uri)]
        for k, uri in cls.record_files(cfg.method_config()).items()
    }
    where = type("Where", (), {"device": "cpu", "dtype": "float32"})()
    return Prepared(model, tok, where, None, layers, names, enc, extra)  # type: ignore[arg-type]


def unlearn(base: Any, tok: Any, sets: Sets, cfg: UnlearnConfig) -> tuple[Any, int]:
    """The unlearn stage's training on a copy of the base model (no store, no checkpoints), with the
    method's own schedule and record files as the stage gives them."""
    prep = prepared(base, tok, sets, cfg)
    reference = copy.deepcopy(base).eval() if method_class(cfg.method).wants_reference(cfg.method_config()) else None
    state = trainer_for(cfg, prep, prep.model, reference).train()
    return prep.model.eval(), state.step


def score(model: Any, tok: Any, sets: Sets, utility: list[Any]) -> dict[str, float]:
    """forget score, retain score (trained-on people), held-out retain score (people in neither set), utility."""
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


def evaluation(
    model: Any,
    tok: Any,
    sets: Sets,
    mia: dict[str, list[MIADocument]],
    utility: list[Any],
    role: str,
    attacks: AttackConfig | None,
) -> Evaluation:
    """The evaluate stage's figures for a model in memory (evaluate_model, no store): the demo's settings
    (64 new tokens, its utility set asked zero-shot), MIA on the split's documents, the given attacks."""
    cfg = EvaluateConfig(max_new_tokens=64, mmlu=MMLUConfig(uri="demo-utility", shots=0), attacks=attacks)
    groups = {"forget": sets["forget_train"] + sets["forget_eval"], "retain": sets["retain_train"],
              "retain_held_out": sets["retain_eval"]}  # fmt: skip
    identity = {"model_uri": role, "model_digest": None, "uri": "", "key": None}
    return evaluate_model(cfg, model, tok, groups, mia, utility, [], role, _Log(), identity).result
