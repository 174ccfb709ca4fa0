"""Stage 4 — evaluate: the SemEval-2025 Task 4 scorer's metrics on one model, plus MIA and MMLU.

Sets scored: forget (the split's forget_train + forget_eval), retain (retain_train) and retain held out
(retain_eval: documents the unlearning never trained on, reported beside the official figures).
Per-item scores and generations go to the artifact store only: generations of forget prompts are the
very text the run must forget, so MLflow sees aggregates, ids and digests and nothing else.

With the run's plan, the candidate is also scored on the standing obligations it names: each earlier
request's items, from their sealed prompts, scored against keyed fingerprints of the answers (the same
score as the official scorer's, without the answers), per request. Their generations are not kept.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amnesia.core.config import ModelConfig, config_hash
from amnesia.core.progress import Progress
from amnesia.results.evaluation import Evaluation
from amnesia.results.plan import RunPlan
from amnesia.results.split import SplitResult
from amnesia.science.generation import greedy_generate, sampled_generate
from amnesia.science.metrics.aggregate import membership_percentile, per_task
from amnesia.science.metrics.items import extracted, fingerprint_score, item_score
from amnesia.science.metrics.registry import METRICS, Measured, compute
from amnesia.science.mmlu import sample, score_mmlu
from amnesia.science.records import ID_PATTERN, MIADocument, MMLUQuestion, UnlearningRecord
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.models import as_model_config, load, placement, resolve_model, weight_drift
from amnesia.storage.obligations import CheckItem, ObligationStore, PersonScores, person_scores
from amnesia.storage.records import load_mmlu, load_records
from amnesia.storage.uri import MANIFEST_NAME, join

SETS = {"forget": ("forget_train", "forget_eval"), "retain": ("retain_train",), "retain_held_out": ("retain_eval",)}


# ---------------------------------------------------------------- pieces


@torch.inference_mode()
def document_losses(
    model: Any, tokenizer: Any, docs: Sequence[str], batch_size: int = 16, done: Callable[[int], None] = lambda n: None
) -> list[float]:
    """Mean next-token NLL of each whole document (the MIA signal), batched with right padding."""
    device = next(model.parameters()).device
    limit = int(getattr(model.config, "max_position_embeddings", 4096) or 4096)
    encoded = [tokenizer(d, add_special_tokens=True)["input_ids"][:limit] for d in docs]
    out: list[float] = [0.0] * len(docs)
    order = sorted(range(len(docs)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target, keep = ids[:, 1:].to(device), mask[:, 1:].to(device).bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        per_doc = (nll * keep).sum(-1) / keep.sum(-1).clamp(min=1)
        for row, i in enumerate(chunk):
            out[i] = float(per_doc[row])
        done(len(chunk))
    return out


def score_items(
    model: Any,
    tokenizer: Any,
    records: Sequence[UnlearningRecord],
    cfg: EvaluateConfig,
    done: Callable[[int], None] = lambda n: None,
) -> tuple[list[str], list[float]]:
    prompts = [r.input for r in records]
    gens = greedy_generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, done)
    return gens, [item_score(r.kind, g, r.output) for r, g in zip(records, gens, strict=True)]


Checks = dict[str, tuple[list[CheckItem], bytes]]  # request id -> its items and fingerprint key


def score_obligations(
    model: Any, tokenizer: Any, checks: Checks, cfg: EvaluateConfig, done: Callable[[int], None] = lambda n: None
) -> tuple[dict[str, PersonScores], list[dict[str, Any]]]:
    """Each obligation's figures from its fingerprints, and the per-item rows (request, id, kind, score)."""
    flat = [(rid, item, key) for rid, (items, key) in sorted(checks.items()) for item in items]
    gens = greedy_generate(model, tokenizer, [i.prompt for _r, i, _k in flat], cfg.max_new_tokens, cfg.batch_size, done)
    rows = [{"request_id": rid, "id": i.id, "kind": i.kind, "score": fingerprint_score(i.kind, g, i.fingerprint, key)}
            for (rid, i, key), g in zip(flat, gens, strict=True)]  # fmt: skip
    figures = {rid: person_scores([(r["kind"], r["score"]) for r in rows if r["request_id"] == rid]) for rid in checks}
    return figures, rows


def _document(record_id: str) -> str | None:
    found = ID_PATTERN.match(record_id)
    return found["doc"] if found else None


def _per_request(ctx: RunContext, split: SplitResult, scored: Scored) -> dict[str, PersonScores]:
    """This run's requests one by one: each person's forget items, from the split report's documents, with
    the share of them extracted by sampling and their documents' membership percentiles when measured."""
    if not split.request_ids:
        return {}
    report = ctx.store.get_json(join(split.uri, L.SPLIT_REPORT))
    docs = {rid: set(d) for rid, d in report.get("request_documents", {}).items()}
    forget = [i | {"doc": _document(i["id"])} for i in scored.items if i["set"] == "forget"]
    out = {}
    for rid, mine in sorted(docs.items()):
        theirs = [i for i in forget if i["doc"] in mine]
        if not theirs:
            continue
        figures = person_scores([(i["kind"], i["score"]) for i in theirs])
        if all("extracted" in i for i in theirs):
            figures.extraction = sum(bool(i["extracted"]) for i in theirs) / len(theirs)
        if scored.mia is not None and scored.mia[1]:
            members, nonmembers, ids = scored.mia[0], scored.mia[1], scored.mia[2]
            own = [loss for loss, doc in zip(members, ids, strict=True) if doc in mine]
            if own:
                figures.membership = max(membership_percentile(x, nonmembers) for x in own)
                figures.documents = len(own)
        out[rid] = figures
    return out


def _drift(ctx: RunContext, uri: str, plan: RunPlan | None) -> dict[str, float]:
    """The candidate's weight drift from the original model and, in an incremental run, from the champion it
    started from (both read from their stored folders; a hub model has none)."""
    if plan is None:
        return {}
    here, _ = resolve_model(uri, store=ctx.store)
    out = {}
    others = {"original": plan.original_uri} | ({"previous_champion": plan.start_uri} if plan.start_version else {})
    for name, other in others.items():
        folder, _ = resolve_model(other, store=ctx.store)
        if here is not None and folder is not None:
            out[name] = round(weight_drift(here, folder), 6)
    return out


def _obligation_checks(ctx: RunContext, plan: RunPlan | None, role: str) -> Checks:
    """The candidate's obligations to check, opened (the base model is the original: it knows them all)."""
    if plan is None or role != "candidate" or not plan.obligations:
        return {}
    store = ObligationStore(ctx.store, L.store_root(ctx.root), plan.model_name)
    out = {}
    for ref in plan.obligations:
        ob = store.get(ref.request_id)
        if ob is None:
            raise ValueError(f"obligation {ref.request_id}: planned but not in {store.folder}")
        out[ref.request_id] = store.checks(ob)
    return out


def _canonical_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- the stage


def _load_sets(ctx: RunContext, split: SplitResult) -> dict[str, list[UnlearningRecord]]:
    return {
        group: [r for name in names for r in load_records(split.sets[name].uri, allow_empty=True, store=ctx.store)]
        for group, names in SETS.items()
    }


def _load_mmlu(cfg: EvaluateConfig, ctx: RunContext) -> tuple[list[MMLUQuestion], list[MMLUQuestion]]:
    if cfg.mmlu is None:
        return [], []
    m = cfg.mmlu
    questions = sample(load_mmlu(m.uri, m.split, m.subjects, store=ctx.store), m.per_subject, m.seed)
    dev = load_mmlu(m.uri, m.dev_split, m.subjects, store=ctx.store) if m.shots else []
    return questions, dev


def run_evaluate(
    cfg: EvaluateConfig,
    ctx: RunContext,
    model: ModelConfig | str,
    split: SplitResult,
    role: str,
    plan: RunPlan | None = None,
) -> Evaluation:
    """Score one model; a stored result for the same (model, data, config, dtype) is reused when cfg.cache."""
    t0 = time.monotonic()
    mcfg = as_model_config(model)
    model_uri = mcfg.uri
    sets = _load_sets(ctx, split)
    questions, dev = _load_mmlu(cfg, ctx)
    checks = _obligation_checks(ctx, plan, role)
    _folder, model_digest = resolve_model(model_uri, store=ctx.store)
    data_digest = _canonical_digest([split.digest, [q.model_dump() for q in questions], [q.model_dump() for q in dev]]
                                    + ([sorted(checks)] if checks else [])
                                    + ([plan.original_digest, plan.start_digest] if plan and role == "candidate"
                                       else []))  # fmt: skip
    # Scores depend on the numerics: a bf16 evaluation is not a cached fp32 one.
    numerics = [placement(mcfg).dtype, mcfg.attn_implementation or "default"]
    # ... and a newly registered metric is a figure a stored result lacks.
    parts = [model_digest, data_digest, config_hash(cfg), numerics, [*METRICS]]
    key = _canonical_digest(parts) if model_digest else None
    root = L.store_root(ctx.root)
    uri = L.evaluation_cache_uri(root, key) if key else L.stage_uri(ctx.root, "evaluate", role)
    if key and cfg.cache and ctx.store.exists(join(uri, MANIFEST_NAME)):
        found = Evaluation.load(ctx.store, uri)
        update = {"role": role, "model_uri": model_uri, "cached": True, "digest": ctx.store.ref(uri).digest}
        result = found.model_copy(update=update)
        ctx.log.info("evaluate %s: reused the stored result %s", role, uri)
    else:
        result = _evaluate(cfg, ctx, mcfg, model_digest, split, sets, questions, dev, role, uri, key, t0, checks, plan)
    if ctx.lineage is not None:
        _record_lineage(ctx, result, cfg)
    return result


def _evaluate(
    cfg: EvaluateConfig,
    ctx: RunContext,
    mcfg: ModelConfig,
    model_digest: str | None,
    split: SplitResult,
    sets: dict[str, list[UnlearningRecord]],
    questions: list[MMLUQuestion],
    dev: list[MMLUQuestion],
    role: str,
    uri: str,
    key: str | None,
    t0: float,
    checks: Checks | None = None,
    plan: RunPlan | None = None,
) -> Evaluation:
    loaded, where = load(mcfg, store=ctx.store)
    identity = {"model_uri": mcfg.uri, "model_digest": model_digest, "placement": where.params(mcfg), "uri": uri,
                "key": key}  # fmt: skip
    inputs = Inputs(sets, _mia_documents(cfg, ctx, split), questions, dev, checks or {})
    scored, rows = score_model(cfg, ctx, split, inputs, loaded.model, loaded.tokenizer, role, identity)
    update = {"seconds": round(time.monotonic() - t0, 1), "drift": _drift(ctx, mcfg.uri, plan) if role == "candidate"
              else {}}  # fmt: skip
    result = scored.result.model_copy(update=update)
    return _store(ctx, result, scored.items, scored.generations, scored.mia, scored.attack_rows, rows)


@dataclass
class Inputs:
    """What a model is scored on, loaded once (the settings search scores many models on the same)."""

    sets: dict[str, list[UnlearningRecord]]
    mia: dict[str, list[MIADocument]] | None
    questions: list[MMLUQuestion]
    dev: list[MMLUQuestion]
    checks: Checks

    @classmethod
    def load(
        cls, cfg: EvaluateConfig, ctx: RunContext, split: SplitResult, plan: RunPlan | None, role: str
    ) -> Inputs:
        questions, dev = _load_mmlu(cfg, ctx)
        checks = _obligation_checks(ctx, plan, role)
        return cls(_load_sets(ctx, split), _mia_documents(cfg, ctx, split), questions, dev, checks)


def score_model(
    cfg: EvaluateConfig,
    ctx: RunContext,
    split: SplitResult,
    inputs: Inputs,
    model: Any,
    tok: Any,
    role: str,
    identity: dict[str, Any],
) -> tuple[Scored, list[dict[str, Any]]]:
    """Every figure of one loaded model (evaluate_model), with this run's requests one by one and the standing
    obligations the inputs carry; the per-item rows of the obligations beside it."""
    scored = evaluate_model(
        cfg, model, tok, inputs.sets, inputs.mia, inputs.questions, inputs.dev, role, ctx.log, identity
    )
    obligations, rows = {}, []
    if inputs.checks:
        total = sum(len(items) for items, _key in inputs.checks.values())
        with Progress(total, f"evaluate {role}: {len(inputs.checks)} earlier requests", "item", ctx.log) as bar:
            obligations, rows = score_obligations(model, tok, inputs.checks, cfg, bar.update)
    update = {"obligations": obligations, "requests": _per_request(ctx, split, scored)}
    scored.result = scored.result.model_copy(update=update)
    return scored, rows


@dataclass
class Scored:
    """An evaluation and the per-item evidence behind it (what the stage stores beside result.json)."""

    result: Evaluation
    items: list[dict[str, Any]]
    generations: dict[str, str]
    mia: tuple[list[float], list[float], list[str], list[str]] | None
    attack_rows: list[dict[str, Any]]


def evaluate_model(
    cfg: EvaluateConfig,
    model: Any,
    tok: Any,
    sets: dict[str, list[UnlearningRecord]],
    mia_docs: dict[str, list[MIADocument]] | None,
    questions: list[MMLUQuestion],
    dev: list[MMLUQuestion],
    role: str,
    log: Any,
    identity: dict[str, Any],
) -> Scored:
    """Every figure of one loaded model, with no store: generations and item scores per set, the attacks,
    the MIA losses, and the registered metrics. `identity` fills the result's model_uri, model_digest,
    placement, uri and key."""
    t0 = time.monotonic()
    items, gens, scores, scored = [], {}, {}, {}
    total = sum(len(r) for r in sets.values())
    with Progress(total, f"evaluate {role}: generating", "item", log) as bar:  # a bar, or ETA lines in a pod
        for group, records in sets.items():
            g, s = score_items(model, tok, records, cfg, bar.update) if records else ([], [])
            scores[group] = per_task((r.task, r.kind, x) for r, x in zip(records, s, strict=True))
            scored[group] = list(zip(records, g, s, strict=True))
            for r, text, x in scored[group]:
                items.append({"id": r.id, "set": group, "task": r.task, "kind": r.kind, "score": x})
                gens[r.id] = text
    if not scores["forget"] or not scores["retain"]:
        raise ValueError("evaluation needs forget and retain items")
    if cfg.extraction is not None:  # per forget item: does any sampled generation reproduce it?
        hits = extraction(cfg, model, tok, sets["forget"], role, log)
        for row, hit in zip((i for i in items if i["set"] == "forget"), hits, strict=True):
            row["extracted"] = hit
    attacks, attack_rows = attack_figures(
        cfg, model, tok, sets["forget"], [i["score"] for i in items if i["set"] == "forget"], role, log
    )
    mia = None
    if mia_docs is not None:
        if mia_docs.get("mia_members") and mia_docs.get("mia_nonmembers"):
            mia = _mia(cfg, mia_docs, model, tok, role, log)
        else:
            log.warning("evaluate: no MIA members or non-members in the split; MIA skipped")
    measured = Measured(
        cfg, role, scores, scored, mia[:2] if mia else None, model, tok, questions, dev,
        progress=lambda n, what, unit: Progress(n, what, unit, log), score_mmlu=score_mmlu,
    )  # fmt: skip
    figures = compute(measured)
    mmlu = measured.details.get("mmlu")
    result = Evaluation(
        role=role,
        digest="",
        cached=False,
        forget=scores["forget"],
        retain=scores["retain"],
        retain_held_out=scores["retain_held_out"],
        metrics=figures,
        mmlu_subjects=mmlu.subjects if mmlu else {},
        mmlu_questions=mmlu.questions if mmlu else 0,
        mmlu_sampling=_sampling(cfg),
        mmlu_format=mmlu.format if mmlu else "none",
        attacks=attacks,
        counts={g: len(r) for g, r in sets.items()}
        | {"mia_members": len(mia[0]) if mia else 0, "mia_nonmembers": len(mia[1]) if mia else 0}
        | {"mmlu_shots_reduced": mmlu.shots_reduced if mmlu else 0},
        seconds=round(time.monotonic() - t0, 1),
        **identity,
    )
    return Scored(result, items, gens, mia, attack_rows)


def extraction(
    cfg: EvaluateConfig, model: Any, tok: Any, records: Sequence[UnlearningRecord], role: str, log: Any
) -> list[bool]:
    """The extraction test: per record, whether any of `samples` sampled continuations reproduces its answer."""
    x = cfg.extraction
    assert x is not None
    with Progress(len(records), f"evaluate {role}: extraction ({x.samples} samples each)", "item", log) as bar:
        samples = sampled_generate(model, tok, [r.input for r in records], x.samples, x.temperature,
                                   cfg.max_new_tokens, cfg.batch_size, x.seed, bar.update)  # fmt: skip
    return [extracted(r.kind, got, r.output) for r, got in zip(records, samples, strict=True)]


def attack_figures(
    cfg: EvaluateConfig,
    model: Any,
    tok: Any,
    forget: list[UnlearningRecord],
    plain: list[float],
    role: str,
    log: Any,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """The configured attacks on this model's forget set, with the unattacked figures as "none"."""
    if cfg.attacks is None:
        return {}, []
    from amnesia.science.attacks import means, run_attacks

    a = cfg.attacks
    q = a.quantization
    runs = (len(q.bits) * len(q.schemes) + q.nf4 if q else 0) + (1 if a.relearning else 0)
    with Progress(runs * len(forget), f"evaluate {role}: attacks", "item", log) as bar:

        def score(m: Any, records: Sequence[UnlearningRecord]) -> list[float]:
            return score_items(m, tok, records, cfg, bar.update)[1]

        figures, rows = run_attacks(a, model, tok, forget, score)
    return {"none": means(forget, plain)} | figures, rows


def _sampling(cfg: EvaluateConfig) -> str:
    if cfg.mmlu is None:
        return "none"
    m = cfg.mmlu
    which = "all subjects" if m.subjects is None else f"{len(m.subjects)} subjects"
    each = "all questions" if m.per_subject is None else f"{m.per_subject} per subject (seed {m.seed})"
    return f"{m.split}, {which}, {each}, {m.shots}-shot"


def _mia_documents(cfg: EvaluateConfig, ctx: RunContext, split: SplitResult) -> dict[str, list[MIADocument]] | None:
    if not cfg.mia:
        return None
    docs = {
        name: load_records(split.sets[name].uri, MIADocument, allow_empty=True, store=ctx.store)
        for name in ("mia_members", "mia_nonmembers")
    }
    return docs


def _mia(
    cfg: EvaluateConfig, docs: dict[str, list[MIADocument]], model: Any, tok: Any, role: str, log: Any
) -> tuple[list[float], list[float], list[str], list[str]]:
    with Progress(sum(len(d) for d in docs.values()), f"evaluate {role}: MIA", "document", log) as bar:
        losses = [
            document_losses(model, tok, [d.document for d in docs[n]], cfg.batch_size, bar.update)
            for n in ("mia_members", "mia_nonmembers")
        ]
    return losses[0], losses[1], [d.id for d in docs["mia_members"]], [d.id for d in docs["mia_nonmembers"]]


def _store(
    ctx: RunContext,
    result: Evaluation,
    items: list[dict[str, Any]],
    gens: dict[str, str],
    mia: tuple[list[float], list[float], list[str], list[str]] | None,
    attack_rows: list[dict[str, Any]],
    obligation_rows: list[dict[str, Any]] | None = None,
) -> Evaluation:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / L.RESULT).write_text(result.model_dump_json(indent=1))
        (folder / L.ITEMS).write_text("".join(json.dumps(i) + "\n" for i in items))
        (folder / L.GENERATIONS).write_text(
            "".join(json.dumps({"id": k, "generation": v}) + "\n" for k, v in gens.items())
        )
        if mia:
            rows = [{"id": i, "member": True, "loss": x} for i, x in zip(mia[2], mia[0], strict=True)]
            rows += [{"id": i, "member": False, "loss": x} for i, x in zip(mia[3], mia[1], strict=True)]
            (folder / L.MIA_LOSSES).write_text("".join(json.dumps(r) + "\n" for r in rows))
        if attack_rows:  # per item under each attack: ids and scores, no text
            (folder / L.ATTACK_ITEMS).write_text("".join(json.dumps(r) + "\n" for r in attack_rows))
        if obligation_rows:  # per earlier request's item: ids and scores, no text
            (folder / L.OBLIGATION_ITEMS).write_text("".join(json.dumps(r) + "\n" for r in obligation_rows))
        ref = ctx.store.put_dir(folder, result.uri)
    return result.model_copy(update={"digest": ref.digest})


def _record_lineage(ctx: RunContext, result: Evaluation, cfg: EvaluateConfig) -> None:
    assert ctx.lineage is not None
    with ctx.lineage.stage(f"evaluate-{result.role}") as run:
        m = cfg.mmlu
        run.log_params(
            {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "mia": cfg.mia}
            | result.placement
            | ({"mmlu_uri": m.uri, "mmlu_split": m.split, "mmlu_shots": m.shots, "mmlu_seed": m.seed,
                "mmlu_format": m.format,
                "mmlu_per_subject": m.per_subject or "all", "mmlu_questions": result.mmlu_questions} if m else {})
        )  # fmt: skip
        tags = {Tag.CONFIG_HASH: config_hash(cfg), Tag.EVALUATION_URI: result.uri, Tag.EVALUATION_DIGEST: result.digest,
                Tag.EVALUATION_CACHED: str(result.cached).lower(), Tag.MODEL_URI: result.model_uri}  # fmt: skip
        if result.model_digest:
            tags[Tag.MODEL_DIGEST] = result.model_digest
        run.set_tags(tags)
        run.log_metrics(result.flat() | {f"count_{k}": v for k, v in result.counts.items()}
                        | ({"count_obligations": len(result.obligations)} if result.obligations else {}))  # fmt: skip
