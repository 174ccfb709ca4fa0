"""Stage 1 — split: erasure requests (or ready SemEval files) into validated, deterministic sets.

Outputs, as Parquet through the artifact store: forget_train, forget_eval, retain_train,
retain_eval, mia_members, mia_nonmembers, plus the request snapshot and a split report (counts and
warnings, never text). With the run's plan, the standing obligations' documents (every request an approved
version fulfilled) never land in a retain set again: training on them would teach the people back. A
cumulative run forgets them again with this run's requests.

Documents stay whole: a document's sc and qa items always land together,
in a set chosen by a seeded hash of its id, so one changed record changes only its own set.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path

from amnesia.core.config import config_hash
from amnesia.core.errors import AmnesiaError
from amnesia.results.plan import RunPlan
from amnesia.results.split import SetInfo, SplitResult
from amnesia.science.records import ID_PATTERN, MIADocument, UnlearningRecord, write_parquet
from amnesia.stages.split.config import SplitConfig
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.records import load_records
from amnesia.storage.requests import (
    DUE_SOON_DAYS,
    ErasureRequest,
    RequestQueue,
    canonical_jsonl,
    load_requests_uri,
    request_digest,
)
from amnesia.storage.uri import join

SETS, MIA_SETS = L.SPLIT_SETS, L.MIA_SETS
HOLDOUT = "holdout"


class SplitError(AmnesiaError):
    """The inputs would make the split wrong or impossible to audit; the message names what."""


# ---------------------------------------------------------------- text matching


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _mentions(subject: str) -> re.Pattern[str]:
    # Whole words only: "Ada Lind" must not match "Ada Lindqvist".
    return re.compile(r"(?<!\w)" + re.escape(normalise(subject)) + r"(?!\w)")


def _record_text(r: UnlearningRecord) -> str:
    return normalise(r.input) + "\n" + normalise(r.output)


# ---------------------------------------------------------------- helpers


def _by_document(records: Iterable[UnlearningRecord]) -> dict[str, list[UnlearningRecord]]:
    docs: dict[str, list[UnlearningRecord]] = defaultdict(list)
    for r in records:
        docs[r.document_id].append(r)
    return docs


def _unique_ids(records: list[UnlearningRecord], source: str) -> None:
    counts = Counter(r.id for r in records)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise SplitError(
            f"{source}: duplicate record id {dupes[0]}" + (f" (+{len(dupes) - 1} more)" if dupes[1:] else "")
        )


def in_eval(document_id: str, fraction: float, seed: int) -> bool:
    """A document's fate depends on its id and the seed alone, so sets are stable under edits elsewhere."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}:{document_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def document_text(records: list[UnlearningRecord]) -> str:
    """A document's text for MIA, rebuilt from its items: the longest sentence completion (its start plus
    continuation is the whole document), or the QA pairs when it has no sc item."""
    sc = [f"{r.input} {r.output}" for r in records if r.kind == "sc"]
    if sc:
        return max(sc, key=len)
    return "\n".join(f"{r.input} {r.output}" for r in sorted(records, key=lambda r: r.index))


# ---------------------------------------------------------------- request mode


def _resolve(
    requests: list[ErasureRequest], docs: dict[str, list[UnlearningRecord]], cfg: SplitConfig, warnings: Counter[str]
) -> set[str]:
    """The documents each request needs forgotten: named documents, the documents of named records, and
    the subject's own documents: those where the subject (case/space-insensitive, whole words, input or
    output) appears in at least `subject_share` of the records. A document that merely mentions the
    subject is left to the retain-mention check, which refuses it or moves it, as configured."""
    record_doc = {r.id: d for d, rs in docs.items() for r in rs}
    texts = {d: [_record_text(r) for r in rs] for d, rs in docs.items()}
    forget: set[str] = set()
    for req in requests:
        for doc in req.document_ids:
            if doc not in docs:
                raise SplitError(f"request {req.request_id}: document {doc} is not in the corpus")
        for rid in req.record_ids:
            if rid not in record_doc:
                raise SplitError(f"request {req.request_id}: record {rid} is not in the corpus")
        found = _matches(req, record_doc, texts, cfg)
        # Claimed by the share rule though some of its records never mention the subject: said, not silent.
        pattern = _mentions(req.subject)
        partly = [d for d in found - set(req.document_ids) if not all(pattern.search(t) for t in texts[d])]
        warnings["document_partly_about_the_subject"] += len(partly)
        if not found:
            if cfg.unmatched_requests == "refuse":
                raise SplitError(
                    f"request {req.request_id}: its subject and ids match nothing in the corpus "
                    "(set split.unmatched_requests: warn to go on without it)"
                )
            warnings["unmatched_request"] += 1
        forget |= found
    return forget


def _matches(
    req: ErasureRequest, record_doc: dict[str, str], texts: dict[str, list[str]], cfg: SplitConfig
) -> set[str]:
    pattern = _mentions(req.subject)
    own = {d for d, ts in texts.items() if sum(bool(pattern.search(t)) for t in ts) >= cfg.subject_share * len(ts)}
    named = {d for d in req.document_ids if d in texts} | {record_doc[r] for r in req.record_ids if r in record_doc}
    return named | own


def request_documents(
    requests: list[ErasureRequest], forget: list[UnlearningRecord], cfg: SplitConfig
) -> dict[str, list[str]]:
    """Each request's documents among the forget set (ids only: per-request evidence reads them)."""
    docs = _by_document(forget)
    record_doc = {r.id: d for d, rs in docs.items() for r in rs}
    texts = {d: [_record_text(r) for r in rs] for d, rs in docs.items()}
    return {q.request_id: sorted(_matches(q, record_doc, texts, cfg)) for q in requests}


def _retain_mentions(
    requests: list[ErasureRequest],
    docs: dict[str, list[UnlearningRecord]],
    forget: set[str],
    cfg: SplitConfig,
    warnings: Counter[str],
) -> set[str]:
    """Retain records that still mention a forgotten subject: refused, or their documents moved to forget."""
    patterns = [(req.request_id, _mentions(req.subject)) for req in requests]
    moved: set[str] = set()
    for doc, rs in docs.items():
        if doc in forget:
            continue
        for r in rs:
            text = _record_text(r)
            hit = next((rid for rid, p in patterns if p.search(text)), None)
            if hit is None:
                continue
            if cfg.retain_mentions == "refuse":
                raise SplitError(
                    f"retain record {r.id} mentions the subject of request {hit} "
                    "(set split.retain_mentions: move to forget its document too)"
                )
            moved.add(doc)
            break
    warnings["retain_document_moved_to_forget"] += len(moved)
    return forget | moved


# ---------------------------------------------------------------- checks shared by both modes


def _check_overlap(forget: list[UnlearningRecord], retain: list[UnlearningRecord]) -> None:
    retain_ids = {r.id for r in retain}
    both = sorted({r.id for r in forget} & retain_ids)
    if both:
        raise SplitError(f"record {both[0]} is in both the forget and the retain set")
    retain_docs = {r.document_id: r.id for r in retain}
    for r in forget:
        if r.document_id in retain_docs:
            raise SplitError(
                f"document {r.document_id} is split across forget ({r.id}) and retain "
                f"({retain_docs[r.document_id]}); a document must be forgotten whole"
            )
    retain_text = {_record_text(r): r.id for r in retain}
    for r in forget:
        twin = retain_text.get(_record_text(r))
        if twin is not None:
            raise SplitError(f"forget record {r.id} and retain record {twin} have the same text (normalised)")


def _count_duplicate_text(records: list[UnlearningRecord], warnings: Counter[str], name: str) -> None:
    counts = Counter(_record_text(r) for r in records)
    warnings[f"{name}_duplicate_text"] += sum(n - 1 for n in counts.values() if n > 1)


# ---------------------------------------------------------------- MIA


def _as_document(doc: MIADocument, known: Collection[str]) -> MIADocument:
    """LUME's MIA files name a document by one of its records' ids (<uuid>sc1): read it as the document's id
    (an id that is a known document already stays as it is)."""
    if doc.id in known or not (found := ID_PATTERN.match(doc.id)):
        return doc
    return doc.model_copy(update={"id": found["doc"]})


def _mia(
    cfg: SplitConfig,
    forget_docs: dict[str, list[UnlearningRecord]],
    trained_docs: set[str],
    holdout: dict[str, list[UnlearningRecord]],
    warnings: Counter[str],
    store: ArtifactStore,
) -> dict[str, list[MIADocument]]:
    members: dict[str, MIADocument] = {}
    if cfg.mia_members:
        given = load_records(cfg.mia_members, MIADocument, store=store)
        members = {d.id: d for d in (_as_document(m, forget_docs) for m in given) if d.id in forget_docs}
    missing = sorted(set(forget_docs) - set(members))
    if cfg.mia_members and missing:
        warnings["mia_member_rebuilt_from_records"] += len(missing)
    members |= {d: MIADocument(id=d, document=document_text(forget_docs[d])) for d in missing}

    if cfg.mia_nonmembers:
        nonmembers = load_records(cfg.mia_nonmembers, MIADocument, store=store)
    else:
        nonmembers = [MIADocument(id=d, document=document_text(rs)) for d, rs in holdout.items()]
    nonmembers = [_as_document(d, trained_docs) for d in nonmembers]
    trained = sorted({d.id for d in nonmembers} & trained_docs)
    if trained:
        raise SplitError(f"MIA non-member {trained[0]} is a trained document (it is in the corpus)")
    if not nonmembers:
        warnings["no_mia_nonmembers"] += 1
    return {
        "mia_members": sorted(members.values(), key=lambda d: d.id),
        "mia_nonmembers": sorted(nonmembers, key=lambda d: d.id),
    }


# ---------------------------------------------------------------- the stage


def _load_requests(cfg: SplitConfig, ctx: RunContext) -> list[ErasureRequest]:
    if cfg.requests == "queue":  # the soonest due first (Art. 12(3) deadlines)
        return [d.request for d in RequestQueue(ctx.store, L.store_root(ctx.root)).by_due_date("pending")]
    return load_requests_uri(ctx.store, cfg.requests or "")


Sets = dict[str, list[UnlearningRecord]]


def _earlier_requests(ctx: RunContext, plan: RunPlan) -> list[ErasureRequest]:
    """The fulfilled requests behind the plan's standing obligations (their subjects find their documents)."""
    queue = RequestQueue(ctx.store, L.store_root(ctx.root))
    found = [queue.find(rid) for rid in plan.earlier]
    return [f[1] for f in found if f is not None and f[0] == "fulfilled"]


def build_sets(
    cfg: SplitConfig, ctx: RunContext, plan: RunPlan | None = None
) -> tuple[Sets, dict[str, list[MIADocument]], list[ErasureRequest], Counter[str]]:
    """Validate the inputs and assign every document to its set. Pure: writes nothing."""
    warnings: Counter[str] = Counter()
    requests: list[ErasureRequest] = []
    excluded = set(plan.earlier_documents) if plan else set()  # standing obligations: never retain again
    if cfg.corpus is not None:
        corpus = load_records(cfg.corpus, store=ctx.store)
        _unique_ids(corpus, cfg.corpus)
        holdout = _by_document(r for r in corpus if r.split == HOLDOUT)
        docs = _by_document(r for r in corpus if r.split != HOLDOUT)
        requests = _load_requests(cfg, ctx)
        earlier = _earlier_requests(ctx, plan) if plan and plan.earlier else []
        current = {r.request_id for r in requests}
        earlier = [r for r in earlier if r.request_id not in current]
        if not requests and not (plan and plan.mode == "cumulative" and earlier):
            raise SplitError(f"{cfg.requests}: no erasure requests to work on")
        forget_ids = _resolve(requests, docs, cfg, warnings)
        if earlier:  # their documents as the corpus has them now; a person no longer in it is no error
            lenient = cfg.model_copy(update={"unmatched_requests": "warn"})
            excluded |= _resolve(earlier, docs, lenient, warnings)
        if plan and plan.mode == "cumulative":
            forget_ids |= excluded & set(docs)
            excluded = set()
        # A retain record naming anyone forgotten, now or before, is refused or moved (an earlier person's own
        # documents are already out of retain: not checked again).
        checked = _retain_mentions(requests + earlier, docs, forget_ids | excluded, cfg, warnings)
        forget_ids |= checked - excluded
        warnings["earlier_document_kept_out_of_retain"] += len((excluded & set(docs)) - forget_ids)
        forget = [r for d in forget_ids for r in docs[d]]
        retain = [r for d, rs in docs.items() if d not in forget_ids and d not in excluded for r in rs]
    else:
        forget = load_records(cfg.forget or "", store=ctx.store)
        retain = load_records(cfg.retain or "", store=ctx.store)
        _unique_ids(forget, cfg.forget or "forget")
        _unique_ids(retain, cfg.retain or "retain")
        kept_out = [r for r in retain if r.document_id in excluded]
        warnings["earlier_document_kept_out_of_retain"] += len({r.document_id for r in kept_out})
        retain = [r for r in retain if r.document_id not in excluded]
        holdout = {}
    if not forget:
        raise SplitError("empty forget set: nothing to forget")
    _check_overlap(forget, retain)
    _count_duplicate_text(forget, warnings, "forget")
    _count_duplicate_text(retain, warnings, "retain")

    sets: Sets = {name: [] for name in SETS}
    for prefix, records, fraction in (
        ("forget", forget, cfg.forget_eval_fraction),
        ("retain", retain, cfg.retain_eval_fraction),
    ):
        for r in records:
            sets[f"{prefix}_{'eval' if in_eval(r.document_id, fraction, cfg.seed) else 'train'}"].append(r)
    sets = {k: sorted(v, key=lambda r: r.id) for k, v in sets.items()}
    if not sets["forget_train"]:
        raise SplitError(
            "forget_train is empty: every forget document fell into forget_eval; lower split.forget_eval_fraction"
        )
    forget_docs = _by_document(forget)
    trained = set(forget_docs) | {r.document_id for r in retain}
    mia = _mia(cfg, forget_docs, trained, holdout, warnings, ctx.store)
    return sets, mia, requests, warnings


def _counts(records: list[UnlearningRecord]) -> dict[str, object]:
    return {
        "records": len(records),
        "documents": len({r.document_id for r in records}),
        "by_task": dict(sorted(Counter(r.task for r in records).items())),
        "by_kind": dict(sorted(Counter(r.kind for r in records).items())),
    }


def run_split(cfg: SplitConfig, ctx: RunContext, plan: RunPlan | None = None) -> SplitResult:
    sets, mia, requests, warnings = build_sets(cfg, ctx, plan)
    warnings = Counter({k: v for k, v in warnings.items() if v})
    if ctx.lineage is not None:
        # Before anything is logged: this run's forget text and subjects may never reach MLflow.
        ctx.lineage.guard.protect(
            [t for name in ("forget_train", "forget_eval") for r in sets[name] for t in (r.input, r.output)]
        )
        ctx.lineage.guard.protect([q.subject for q in requests] + [d.document for d in mia["mia_members"]])
    uri = L.stage_uri(ctx.root, "split")
    ids = sorted(q.request_id for q in requests)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in SETS:
            write_parquet(sets[name], folder / f"{name}.parquet", UnlearningRecord)
        for name in MIA_SETS:
            write_parquet(mia[name], folder / f"{name}.parquet", MIADocument)
        if requests:
            (folder / L.REQUESTS_SNAPSHOT).write_bytes(canonical_jsonl(requests))
        report = {
            "config_hash": config_hash(cfg),
            "seed": cfg.seed,
            "mode": plan.mode if plan else "original",
            "earlier_request_ids": plan.earlier if plan else [],
            "request_digest": request_digest(requests) if requests else None,
            "request_ids": ids,
            "request_documents": request_documents(requests, sets["forget_train"] + sets["forget_eval"], cfg),
            "deadlines": _deadlines(ctx, requests),
            "sets": {n: _counts(sets[n]) for n in SETS} | {n: {"documents": len(mia[n])} for n in MIA_SETS},
            "warnings": dict(sorted(warnings.items())),
        }
        (folder / L.SPLIT_REPORT).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        ref = ctx.store.put_dir(folder, uri)
    manifest = {e.path: e for e in ctx.store.read_manifest(uri).files}
    infos = {
        n: SetInfo(
            uri=join(uri, f"{n}.parquet"),
            sha256=manifest[f"{n}.parquet"].sha256,
            records=len(sets[n]),
            documents=len({r.document_id for r in sets[n]}),
        )
        for n in SETS
    }
    infos |= {
        n: SetInfo(
            uri=join(uri, f"{n}.parquet"),
            sha256=manifest[f"{n}.parquet"].sha256,
            records=len(mia[n]),
            documents=len(mia[n]),
        )
        for n in MIA_SETS
    }
    result = SplitResult(
        uri=uri,
        digest=ref.digest,
        sets=infos,
        request_ids=ids,
        warnings=dict(warnings),
        request_digest=report["request_digest"],
        deadlines=report["deadlines"],
    )  # type: ignore[arg-type]
    ctx.log.info("split: %s", ", ".join(f"{n}={i.records}" for n, i in infos.items()))
    if ctx.lineage is not None:
        _record_lineage(cfg, ctx, result)
    return result


def _deadlines(ctx: RunContext, requests: list[ErasureRequest]) -> dict[str, list[str]]:
    """Which of this run's requests are overdue or due within DUE_SOON_DAYS (the summary warns, MLflow counts)."""
    now = datetime.now(UTC)
    due = RequestQueue(ctx.store, L.store_root(ctx.root)).due(requests)
    return {
        "overdue": [d.request.request_id for d in due if now > d.due],
        "due_soon": [d.request.request_id for d in due if now <= d.due and d.days_left(now) < DUE_SOON_DAYS],
    }


def _record_lineage(cfg: SplitConfig, ctx: RunContext, result: SplitResult) -> None:
    assert ctx.lineage is not None
    ids_digest = hashlib.sha256("\n".join(result.request_ids).encode()).hexdigest()
    with ctx.lineage.stage("split") as run:
        run.log_params(
            {
                "seed": cfg.seed,
                "forget_eval_fraction": cfg.forget_eval_fraction,
                "retain_eval_fraction": cfg.retain_eval_fraction,
                "retain_mentions": cfg.retain_mentions,
                "unmatched_requests": cfg.unmatched_requests,
                "mode": "requests" if cfg.corpus else "semeval",
            }
        )
        tags = {
            Tag.CONFIG_HASH: config_hash(cfg),
            Tag.SPLIT_URI: result.uri,
            Tag.SPLIT_DIGEST: result.digest,
            Tag.REQUEST_COUNT: len(result.request_ids),
        }
        if result.request_digest:
            tags |= {Tag.REQUEST_DIGEST: result.request_digest, Tag.REQUEST_IDS_DIGEST: ids_digest}
        run.set_tags(tags)
        run.log_metrics(
            {f"{n}_records": i.records for n, i in result.sets.items()}
            | {f"warning_{k}": v for k, v in result.warnings.items()}
            | ({f"requests_{k}": len(v) for k, v in result.deadlines.items()} if result.request_ids else {})
        )
        for name, info in result.sets.items():
            run.log_dataset(name, info.sha256, info.uri, name, {"records": info.records, "documents": info.documents})


