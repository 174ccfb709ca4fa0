"""Stage 2 — trace: where does the model keep the facts it must forget? Pick those layers.

Facts are the forget set's QA items: question -> the answer's first token, with the span of the
subject in the question (from the erasure request's subject; otherwise a heuristic: the longest
run of capitalised words after the first word, possessive "'s" dropped). Kept: facts the model
knows (its top-1 next token is the expected one) and whose answer depends on the subject
(corruption lowers p(target) by at least `min_drop`). Everything skipped is counted.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from amnesia.core.config import ModelConfig, config_hash
from amnesia.core.errors import AmnesiaError
from amnesia.core.progress import Progress
from amnesia.results.split import SplitResult
from amnesia.results.trace import TraceResult
from amnesia.science.architecture import inspect_model
from amnesia.science.plots import heatmap
from amnesia.science.records import UnlearningRecord
from amnesia.science.tracing.attribution import atp_trace, confirm, hybrid_trace
from amnesia.science.tracing.causal import (
    GROUPS,
    Fact,
    FactTrace,
    Restoration,
    TraceOptions,
    aggregate,
    corrupted_score,
    subject_embedding_std,
    token_groups,
    trace_fact,
)
from amnesia.science.tracing.layer_choice import LayerChoice, choose, per_fact_effects
from amnesia.stages.split.stage import normalise
from amnesia.stages.trace.config import TraceConfig
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.models import Placement, as_model_config, load
from amnesia.storage.records import load_records
from amnesia.storage.requests import load_requests_uri
from amnesia.storage.uri import join

T = TypeVar("T")
RULE_KIND = "mlp"  # what unlearning trains: the rule reads the MLP effects


class TraceError(AmnesiaError):
    """Nothing to trace, or no way to choose layers; the message says why."""


# ---------------------------------------------------------------- facts


_CAPS = re.compile(r"[A-Z][\w\-]*(?:\s+[A-Z][\w\-]*)*")


def heuristic_subject(question: str) -> tuple[int, int] | None:
    """Longest run of capitalised words, ignoring the question's first word; drops a trailing 's."""
    first_word = re.match(r"\s*\S+", question)
    start_at = first_word.end() if first_word else 0
    runs = [m for m in _CAPS.finditer(question) if m.start() >= start_at]
    if not runs:
        return None
    best = max(runs, key=lambda m: len(m.group()))
    text = re.sub(r"'s$", "", best.group())
    return best.start(), best.start() + len(text)


def subject_span(question: str, subjects: list[str]) -> tuple[int, int] | None:
    """Char span of a known subject in the question (case-insensitive), else the heuristic's."""
    lowered = question.casefold()
    for subject in sorted(subjects, key=len, reverse=True):
        i = lowered.find(normalise(subject))
        if i >= 0:
            return i, i + len(normalise(subject))
    return heuristic_subject(question)


def make_fact(tokenizer: Any, record: UnlearningRecord, subjects: list[str], counts: Counter[str]) -> Fact | None:
    span = subject_span(record.input, subjects)
    if span is None:
        counts["skipped_no_subject"] += 1
        return None
    enc = tokenizer(record.input, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    toks = [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0]]
    full = tokenizer(f"{record.input} {record.output}", add_special_tokens=False)["input_ids"]
    if not toks or full[: len(ids)] != ids or len(full) <= len(ids):
        counts["skipped_tokenization"] += 1
        return None
    return Fact(id=record.id, ids=tuple(ids), subject=(toks[0], toks[-1] + 1), target=full[len(ids)])


@torch.no_grad()
def _top1(model: torch.nn.Module, fact: Fact) -> int:
    ids = torch.tensor([fact.ids], device=next(model.parameters()).device)
    return int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())


# ---------------------------------------------------------------- the stage


def answer_kind(output: str) -> str:
    """A coarse class of the expected answer, one stratum of the fact sample."""
    text = output.strip()
    return "number" if text[:1].isdigit() else "name" if text[:1].isupper() else "text"


def _stratum(record: UnlearningRecord, subjects: list[str]) -> str:
    lowered = record.input.casefold()
    request = next((s for s in sorted(subjects, key=len, reverse=True) if normalise(s) in lowered), "")
    return f"{hashlib.sha256(request.encode()).hexdigest()[:12]}/{answer_kind(record.output)}"


def stratified_order(items: list[T], key: Callable[[T], str], seed: int) -> list[T]:
    """A seeded order whose every prefix holds each stratum in proportion to its size (systematic sampling:
    an item's place is its rank in its shuffled stratum over the stratum's size, plus a random offset)."""
    rng = random.Random(seed)
    strata: dict[str, list[T]] = defaultdict(list)
    for x in items:
        strata[key(x)].append(x)
    placed = []
    for name in sorted(strata):
        members = strata[name]
        rng.shuffle(members)
        offset = rng.random()
        placed += [((i + offset) / len(members), name, i, x) for i, x in enumerate(members)]
    placed.sort(key=lambda p: p[:3])
    return [p[3] for p in placed]


def _facts(
    cfg: TraceConfig, ctx: RunContext, split: SplitResult, tokenizer: Any, model: torch.nn.Module, counts: Counter[str]
) -> tuple[list[Fact], float]:
    records = [
        r
        for name in ("forget_train", "forget_eval")
        for r in load_records(split.sets[name].uri, allow_empty=True, store=ctx.store)
    ]
    req_uri = join(split.uri, L.REQUESTS_SNAPSHOT)
    subjects = [q.subject for q in load_requests_uri(ctx.store, req_uri)] if ctx.store.exists(req_uri) else []
    return select_facts(cfg, records, subjects, tokenizer, model, counts)


def select_facts(
    cfg: TraceConfig,
    records: list[UnlearningRecord],
    subjects: list[str],
    tokenizer: Any,
    model: torch.nn.Module,
    counts: Counter[str],
) -> tuple[list[Fact], float]:
    """The facts to trace among the QA records (known to the model, carried by the subject; at most
    max_facts of them, sampled per stratum) and the noise std (over every tokenised fact's subject: no
    forward needed)."""
    records = sorted((r for r in records if r.kind == "qa"), key=lambda r: r.id)
    counts["facts"] = len(records)
    made = [(r, f) for r in records if (f := make_fact(tokenizer, r, subjects, counts)) is not None]
    if not made:
        raise TraceError(f"no traceable facts among {counts['facts']} forget QA items ({dict(counts)})")
    layout = inspect_model(model)
    std = cfg.noise_multiplier * subject_embedding_std(layout, [f for _r, f in made])
    if cfg.max_facts is not None:
        made = stratified_order(made, lambda rf: _stratum(rf[0], subjects), cfg.seed)
    facts: list[Fact] = []
    for n, (_r, fact) in enumerate(made):
        if cfg.max_facts is not None and len(facts) == cfg.max_facts:
            counts["skipped_over_max_facts"] += len(made) - n
            break
        if _top1(model, fact) != fact.target:
            counts["skipped_unknown"] += 1
            continue
        clean, low = corrupted_score(model, layout, fact, cfg.samples, std, cfg.seed)
        if clean - low < cfg.min_drop:
            counts["skipped_subject_insensitive"] += 1
            continue
        facts.append(fact)
    return facts, std


def _prefix_cache(cfg: TraceConfig, model: torch.nn.Module) -> bool:
    """trace.prefix_cache, with auto resolved: on for a CPU (compute-bound), off for a GPU."""
    return cfg.prefix_cache if isinstance(cfg.prefix_cache, bool) else next(model.parameters()).device.type == "cpu"


def trace_options(cfg: TraceConfig, model: torch.nn.Module, std: float) -> TraceOptions:
    """The tracers' options from the stage's config; std is the subject noise the stage measured."""
    return TraceOptions(
        kinds=tuple(cfg.kinds), samples=cfg.samples, noise_std=std, window=cfg.window, seed=cfg.seed,
        max_rows=cfg.max_rows, prefix_cache=_prefix_cache(cfg, model), graddrop=cfg.graddrop, top=cfg.confirm,
    )  # fmt: skip


def trace_facts(
    cfg: TraceConfig, model: torch.nn.Module, layout: Any, facts: list[Fact], std: float, ctx: RunContext
) -> list[FactTrace]:
    opts = trace_options(cfg, model, std)
    tracer = {"exact": trace_fact, "atp": lambda *a: atp_trace(*a)[0], "hybrid": hybrid_trace}[cfg.method]
    traces = []
    with Progress(len(facts), f"tracing ({cfg.method})", "fact", ctx.log) as bar:
        for f in facts:
            traces.append(tracer(model, layout, f, opts))
            bar.update(1)
    return traces


def _rule(cfg: TraceConfig, traces: list[FactTrace]) -> LayerChoice:
    return choose(
        per_fact_effects(traces, RULE_KIND),
        cfg.k,
        RULE_KIND,
        cfg.group,
        cfg.min_confidence,
        cfg.fallback_layers,
        cfg.resamples,
        cfg.seed,
    )


def confirmed_choice(
    cfg: TraceConfig, model: torch.nn.Module, layout: Any, traces: list[FactTrace], std: float
) -> LayerChoice:
    """hybrid: patch the chosen group's MLP row exactly in every fact and choose again, until the choice
    stands on a group whose row is exact (at most one round per group)."""
    opts = trace_options(cfg, model, std)
    done: set[str] = set()
    while True:
        choice = _rule(cfg, traces)
        if cfg.method != "hybrid" or choice.group is None or choice.group in done:
            return choice
        done.add(choice.group)
        for tr in traces:
            positions = token_groups(len(tr.fact.ids), tr.fact.subject)[choice.group]
            cells = [Restoration(RULE_KIND, t, layer) for t in positions for layer in range(layout.num_layers)]
            confirm(model, layout, tr, cells, opts)


def run_trace(cfg: TraceConfig, ctx: RunContext, model: ModelConfig | str, split: SplitResult) -> TraceResult:
    mcfg = as_model_config(model)
    if cfg.layers is None and RULE_KIND not in cfg.kinds:
        raise TraceError("no MLP effects to choose layers from: trace 'mlp' (trace.kinds) or give trace.layers")
    loaded, where = load(mcfg, store=ctx.store)
    model, tokenizer = loaded.model, loaded.tokenizer
    ctx.log.info("trace: model on %s in %s", where.device_map or where.device, where.dtype)
    layout = inspect_model(model)
    _check_explicit(cfg, layout.num_layers)
    counts: Counter[str] = Counter()
    facts, std = _facts(cfg, ctx, split, tokenizer, model, counts)
    if not facts:
        raise TraceError(f"no traceable facts among {counts['facts']} forget QA items ({dict(counts)})")
    traces = trace_facts(cfg, model, layout, facts, std, ctx)
    counts["traced"] = len(traces)
    choice = confirmed_choice(cfg, model, layout, traces, std) if RULE_KIND in cfg.kinds else None
    layers, rule = decide_layers(cfg, choice)
    # From the subject on (before it, every cell equals the corrupted run: exact for free).
    counts["cells_exact"] = int(sum(m[tr.fact.subject[0] :].sum() for tr in traces for m in tr.exact.values()))
    counts["cells"] = int(sum(m[tr.fact.subject[0] :].size for tr in traces for m in tr.exact.values()))
    agg = {kind: aggregate(traces, kind) for kind in cfg.kinds}
    result = _store(cfg, ctx, tokenizer, traces, agg, layers, rule, counts, choice, std)
    if result.warning:
        ctx.log.warning("trace: WARNING %s", result.warning)
    if ctx.lineage is not None:
        _record_lineage(cfg, ctx, result, mcfg, where, loaded.digest)
    ctx.log.info("trace: %d facts traced (%s), layers %s (%s)", len(traces), cfg.method, layers, rule)
    return result


def _check_explicit(cfg: TraceConfig, num_layers: int) -> None:
    for name, given in (("layers", cfg.layers), ("fallback_layers", cfg.fallback_layers)):
        if given is not None and (not given or any(not 0 <= x < num_layers for x in given)):
            raise TraceError(f"trace.{name} {given}: the model has layers 0..{num_layers - 1}")


def decide_layers(cfg: TraceConfig, choice: LayerChoice | None) -> tuple[list[int], str]:
    """The layers and the rule's name; refuses a choice that is noise unless there is a fallback."""
    if cfg.layers is not None:
        return sorted(set(cfg.layers)), "explicit"
    assert choice is not None
    if not choice.layers:
        raise TraceError(f"{choice.warning}; set trace.layers, or trace.fallback_layers to proceed anyway")
    if choice.fallback:
        return choice.layers, "fallback"
    return choice.layers, f"max-{choice.kind}-window-k{len(choice.layers)}@{_slug(choice.group)}"


def _slug(group: str | None) -> str:
    """A token group as an MLflow-safe word ("last token" -> "last-token")."""
    return (group or "none").replace(" ", "-")


def _store(
    cfg: TraceConfig,
    ctx: RunContext,
    tokenizer: Any,
    traces: list[FactTrace],
    agg: dict[str, np.ndarray],
    layers: list[int],
    rule: str,
    counts: Counter[str],
    choice: LayerChoice | None,
    std: float,
) -> TraceResult:
    uri = L.stage_uri(ctx.root, "trace")
    effect: list[float] = []
    if choice is not None and choice.group is not None:
        effect = [float(x) for x in np.nan_to_num(agg[RULE_KIND][GROUPS.index(choice.group)])]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        aggregate_pngs = []
        for kind, values in agg.items():
            path = folder / L.HEATMAPS / f"aggregate_{kind}.png"
            heatmap(
                values, GROUPS, kind, f"Mean indirect effect over {len(traces)} facts", path, "IE", marked=[0, 1, 2]
            )
            aggregate_pngs.append(path.name)
        # Single-fact heatmaps carry the prompt's tokens (personal data): S3 only, never MLflow.
        for n, tr in enumerate(traces[: cfg.heatmap_facts]):
            tokens = [tokenizer.decode([t]) for t in tr.fact.ids]
            for kind, values in tr.scores.items():
                heatmap(
                    values,
                    tokens,
                    kind,
                    f"p(target) after restoring, fact {n}",
                    folder / L.HEATMAPS / f"fact{n}_{kind}.png",
                    "p",
                    marked=range(*tr.fact.subject),
                )
        (folder / L.TRACE_AGGREGATE).write_text(
            json.dumps(
                {
                    "groups": list(GROUPS),
                    "kinds": {k: v.tolist() for k, v in agg.items()},
                    "clean_mean": float(np.mean([t.clean for t in traces])),
                    "corrupted_mean": float(np.mean([t.corrupted for t in traces])),
                    "layers": layers,
                    "rule": rule,
                    "method": cfg.method,
                    "group": choice.group if choice else None,
                    "effect": effect,
                    "confidence": _finite(choice.confidence) if choice and rule != "explicit" else None,
                    "warning": choice.warning if choice and rule != "explicit" else None,
                    "warning_code": choice.code if choice and rule != "explicit" else None,
                    "choice": choice.evidence() if choice else None,  # every group's window, spread, stability
                    "sample_seed": cfg.seed,
                    "counts": dict(counts),
                    "noise_std": std,
                    "config_hash": config_hash(cfg),
                },
                indent=1,
                sort_keys=True,
                allow_nan=True,
            )
        )
        with open(folder / L.TRACE_FACTS, "w") as fh:
            for tr in traces:
                fh.write(
                    json.dumps(
                        {
                            "id": tr.fact.id,
                            "subject": tr.fact.subject,
                            "clean": tr.clean,
                            "corrupted": tr.corrupted,
                            "scores": {k: v.tolist() for k, v in tr.scores.items()},
                            "exact": {k: v.astype(int).tolist() for k, v in tr.exact.items()},
                        }
                    )
                    + "\n"
                )
        ref = ctx.store.put_dir(folder, uri)
    return TraceResult(
        uri=uri,
        digest=ref.digest,
        layers=layers,
        rule=rule,
        counts=dict(counts),
        heatmaps=[join(uri, L.HEATMAPS, p) for p in aggregate_pngs],
        noise_std=std,
        method=cfg.method,
        group=choice.group if choice else None,
        effect=effect,
        confidence=_finite(choice.confidence) if choice and rule != "explicit" else None,
        warning=choice.warning if choice and rule != "explicit" else None,
        warning_code=choice.code if choice and rule != "explicit" else None,
    )


def _finite(x: float) -> float:
    return float(min(max(x, -1e6), 1e6))  # JSON and MLflow take no infinity


def _record_lineage(
    cfg: TraceConfig,
    ctx: RunContext,
    result: TraceResult,
    mcfg: ModelConfig,
    where: Placement,
    model_digest: str | None,
) -> None:
    assert ctx.lineage is not None
    with ctx.lineage.stage("trace") as run:
        run.log_params(
            {
                "noise_multiplier": cfg.noise_multiplier,
                "samples": cfg.samples,
                "window": cfg.window,
                "seed": cfg.seed,
                "k": cfg.k,
                "kinds": ",".join(cfg.kinds),
                "method": cfg.method,
                "group": _slug(cfg.group),
                "min_confidence": cfg.min_confidence,
                "max_facts": cfg.max_facts or "all",
                "min_drop": cfg.min_drop,
                "explicit_layers": ",".join(map(str, cfg.layers or [])) or "none",
            }
            | where.params(mcfg)
        )
        tags = {
            Tag.CONFIG_HASH: config_hash(cfg),
            Tag.TRACE_URI: result.uri,
            Tag.TRACE_DIGEST: result.digest,
            Tag.LAYERS: ",".join(map(str, result.layers)),
            Tag.LAYER_RULE: result.rule,
            Tag.BASE_MODEL_URI: mcfg.uri,
            Tag.LAYER_GROUP: _slug(result.group),
        }
        if result.warning_code:
            tags[Tag.TRACE_WARNING] = result.warning_code
        if model_digest:
            tags[Tag.BASE_MODEL_DIGEST] = model_digest
        run.set_tags(tags)
        figures = {"noise_std": result.noise_std} | (
            {"layer_confidence": result.confidence} if result.confidence is not None else {}
        )
        run.log_metrics({f"facts_{k}": v for k, v in result.counts.items()} | figures)
        for layer, value in enumerate(result.effect):
            run.log_metrics({"rule_effect": value}, step=layer)
        with tempfile.TemporaryDirectory() as tmp:
            for uri in result.heatmaps:
                local = ctx.store.get_file(uri, Path(tmp) / Path(uri).name)
                run.log_artifact(local, "trace")
