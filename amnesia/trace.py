"""Stage 2 — trace: where does the model keep the facts it must forget? Pick those layers.

Facts are the forget set's QA items: question -> the answer's first token, with the span of the
subject in the question (from the erasure request's subject; otherwise a heuristic: the longest
run of capitalised words after the first word, possessive "'s" dropped). Kept: facts the model
knows (its top-1 next token is the expected one) and whose answer depends on the subject
(corruption lowers p(target) by at least `min_drop`). Everything skipped is counted.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from amnesia.arch import inspect_model
from amnesia.config import ModelConfig, TraceConfig, config_hash
from amnesia.context import RunContext
from amnesia.errors import AmnesiaError
from amnesia.lineage import Tag
from amnesia.models import Placement, as_model_config, load
from amnesia.plots import heatmap
from amnesia.progress import Progress
from amnesia.records import UnlearningRecord, load_records
from amnesia.requests import load_requests_uri
from amnesia.split import SplitResult, normalise
from amnesia.storage import join
from amnesia.tracing import (
    GROUPS,
    Fact,
    FactTrace,
    aggregate,
    choose_layers,
    corrupted_score,
    subject_embedding_std,
    trace_fact,
)


class TraceError(AmnesiaError):
    """Nothing to trace, or no way to choose layers; the message says why."""


class TraceResult(BaseModel):
    uri: str
    digest: str
    layers: list[int]
    rule: str
    counts: dict[str, int]  # facts: total, traced, and each reason for skipping
    mlp_last_subject_effect: list[float]  # per layer: what the automatic rule looked at
    heatmaps: list[str]  # aggregate heatmaps (no record text): the ones that may go to MLflow
    noise_std: float


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


def _facts(
    cfg: TraceConfig, ctx: RunContext, split: SplitResult, tokenizer: Any, model: torch.nn.Module, counts: Counter[str]
) -> list[Fact]:
    records = [
        r
        for name in ("forget_train", "forget_eval")
        for r in load_records(split.sets[name].uri, allow_empty=True, store=ctx.store)
        if r.kind == "qa"
    ]
    records.sort(key=lambda r: r.id)
    req_uri = join(split.uri, "requests.jsonl")
    subjects = [q.subject for q in load_requests_uri(ctx.store, req_uri)] if ctx.store.exists(req_uri) else []
    counts["facts"] = len(records)
    facts = []
    for r in records:
        fact = make_fact(tokenizer, r, subjects, counts)
        if fact is None:
            continue
        if _top1(model, fact) != fact.target:
            counts["skipped_unknown"] += 1
            continue
        facts.append(fact)
    return facts


def _sensitive(
    model: torch.nn.Module, layout: Any, facts: list[Fact], cfg: TraceConfig, std: float, counts: Counter[str]
) -> list[Fact]:
    """Facts whose answer depends on the subject: corrupting it must lower p(target) by min_drop."""
    kept = []
    for fact in facts:
        clean, low = corrupted_score(model, layout, fact, cfg.samples, std, cfg.seed)
        if clean - low < cfg.min_drop:
            counts["skipped_subject_insensitive"] += 1
        else:
            kept.append(fact)
    return kept


def run_trace(cfg: TraceConfig, ctx: RunContext, model: ModelConfig | str, split: SplitResult) -> TraceResult:
    mcfg = as_model_config(model)
    loaded, where = load(mcfg, store=ctx.store)
    model, tokenizer = loaded.model, loaded.tokenizer
    ctx.log.info("trace: model on %s in %s", where.device_map or where.device, where.dtype)
    layout = inspect_model(model)
    counts: Counter[str] = Counter()
    facts = _facts(cfg, ctx, split, tokenizer, model, counts)
    if not facts:
        raise TraceError(f"no traceable facts among {counts['facts']} forget QA items ({dict(counts)})")
    std = cfg.noise_multiplier * subject_embedding_std(layout, facts)
    facts = _sensitive(model, layout, facts, cfg, std, counts)
    if cfg.max_facts is not None and len(facts) > cfg.max_facts:
        counts["skipped_over_max_facts"] += len(facts) - cfg.max_facts
        facts = facts[: cfg.max_facts]
    kinds = tuple(cfg.kinds)
    cpu = next(model.parameters()).device.type == "cpu"
    prefix_cache = cfg.prefix_cache if isinstance(cfg.prefix_cache, bool) else cpu
    traces = []
    with Progress(len(facts), "tracing", "fact", ctx.log) as bar:
        for f in facts:
            traces.append(
                trace_fact(model, layout, f, kinds, cfg.samples, std, cfg.window, cfg.seed, cfg.max_rows, prefix_cache)
            )
            bar.update(1)
    counts["traced"] = len(traces)
    agg = {kind: aggregate(traces, kind) for kind in kinds} if traces else {}
    last_subject = GROUPS.index("last subject token")
    effect = agg["mlp"][last_subject] if "mlp" in agg else np.full(layout.num_layers, np.nan)
    layers, rule = _choose(cfg, effect, layout.num_layers)
    result = _store(cfg, ctx, tokenizer, traces, agg, layers, rule, counts, effect, std)
    if ctx.lineage is not None:
        _record_lineage(cfg, ctx, result, mcfg, where, loaded.digest)
    ctx.log.info("trace: %d facts traced, layers %s (%s)", len(traces), layers, rule)
    return result


def _choose(cfg: TraceConfig, effect: np.ndarray, num_layers: int) -> tuple[list[int], str]:
    if cfg.layers is not None:
        bad = [layer for layer in cfg.layers if not 0 <= layer < num_layers]
        if bad or not cfg.layers:
            raise TraceError(f"trace.layers {cfg.layers}: the model has layers 0..{num_layers - 1}")
        return sorted(set(cfg.layers)), "explicit"
    if np.isnan(effect).all():
        raise TraceError("no MLP effects to choose layers from: trace 'mlp' (trace.kinds) or give trace.layers")
    return choose_layers(np.nan_to_num(effect), cfg.k), f"max-mlp-last-subject-window-k{cfg.k}"


def _store(
    cfg: TraceConfig,
    ctx: RunContext,
    tokenizer: Any,
    traces: list[FactTrace],
    agg: dict[str, np.ndarray],
    layers: list[int],
    rule: str,
    counts: Counter[str],
    effect: np.ndarray,
    std: float,
) -> TraceResult:
    uri = join(ctx.root, "trace")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        aggregate_pngs = []
        for kind, values in agg.items():
            path = folder / "heatmaps" / f"aggregate_{kind}.png"
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
                    folder / "heatmaps" / f"fact{n}_{kind}.png",
                    "p",
                    marked=range(*tr.fact.subject),
                )
        (folder / "aggregate.json").write_text(
            json.dumps(
                {
                    "groups": list(GROUPS),
                    "kinds": {k: v.tolist() for k, v in agg.items()},
                    "clean_mean": float(np.mean([t.clean for t in traces])),
                    "corrupted_mean": float(np.mean([t.corrupted for t in traces])),
                    "layers": layers,
                    "rule": rule,
                    "counts": dict(counts),
                    "noise_std": std,
                    "config_hash": config_hash(cfg),
                },
                indent=1,
                sort_keys=True,
                allow_nan=True,
            )
        )
        with open(folder / "facts.jsonl", "w") as fh:
            for tr in traces:
                fh.write(
                    json.dumps(
                        {
                            "id": tr.fact.id,
                            "subject": tr.fact.subject,
                            "clean": tr.clean,
                            "corrupted": tr.corrupted,
                            "scores": {k: v.tolist() for k, v in tr.scores.items()},
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
        mlp_last_subject_effect=[float(x) for x in np.nan_to_num(effect)],
        heatmaps=[join(uri, "heatmaps", p) for p in aggregate_pngs],
        noise_std=std,
    )


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
        }
        if model_digest:
            tags[Tag.BASE_MODEL_DIGEST] = model_digest
        run.set_tags(tags)
        run.log_metrics({f"facts_{k}": v for k, v in result.counts.items()} | {"noise_std": result.noise_std})
        for layer, value in enumerate(result.mlp_last_subject_effect):
            run.log_metrics({"mlp_last_subject_effect": value}, step=layer)
        with tempfile.TemporaryDirectory() as tmp:
            for uri in result.heatmaps:
                local = ctx.store.get_file(uri, Path(tmp) / Path(uri).name)
                run.log_artifact(local, "trace")
