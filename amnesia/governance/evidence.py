"""`amnesia evidence REQUEST_ID`: what was done about one person's erasure request, for the person and the
regulator who ask (EDPB Opinion 28/2024; GDPR Art. 12(3) and 17).

Received, ground, due date (and any extension), the runs that worked on the request and the model versions
they made, this person's own figures before and after (knowledge and regurgitation on their records, a
membership-inference score on their documents, and what the attacks brought back), the gate's verdict, who
approved and when, whether the version's chain re-verifies, and the purge. Figures come from the stored
per-item results (ids and scores), which a purge keeps: the evidence outlives the data. No record text
appears; the subject's name only with `show_subject`.

Over time: once fulfilled, the request is a standing obligation of its model (amnesia.storage.obligations).
For every version approved since, the evidence says whether that person is still forgotten — the figures
from fingerprints, the date, the version and the digest of the evaluation that checked it — or that the
version did not check them (sampled out), and flags a version that let them back. After a purge the
membership test on their documents stops (the documents are gone); the fingerprint checks go on until
the obligation ends.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.governance.versions import APPROVER, DECIDED_AT, registry_client
from amnesia.science.metrics.aggregate import membership_percentile, mia_auc, mia_score
from amnesia.science.records import ID_PATTERN
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import ErasureRequest, RequestError, RequestQueue
from amnesia.storage.uri import join

KINDS = (("knowledge", "qa"), ("regurgitation", "sc"), ("all", None))  # as amnesia.science.attacks.means
# This person's figures, before -> after: the scorer's, the membership test's, and the per-person attacks'
PERSON_ROWS = ("knowledge", "regurgitation", "mia_score", "extraction", "membership")


class PersonFigures(BaseModel):
    """One model's figures on this person's records and documents."""

    items: int
    documents: int = 0  # their MIA member documents scored
    knowledge: float | None = None  # exact match on their questions
    regurgitation: float | None = None  # ROUGE-L recall on their sentence completions
    all: float | None = None
    mia_auc: float | None = None  # their documents against every non-member
    mia_score: float | None = None
    extraction: float | None = None  # share of their items any sampled generation reproduced
    membership: float | None = None  # their most member-like document's percentile among the non-members


class RunEvidence(BaseModel):
    run_id: str
    documents: list[str]
    model: str | None  # name/version, when the run registered one
    status: str  # approved / rejected / pending_approval / gate failed
    gate_passed: bool | None
    gate_failed_checks: list[str]
    approver: str | None = None
    decided_at: str | None = None
    chain_verified: bool | None = None  # `amnesia audit` of the version
    before: PersonFigures | None = None
    after: PersonFigures | None = None
    recoveries: dict[str, float] = {}  # attack -> metric share brought back, on this person's items
    purged: list[dict[str, Any]] = []  # by, at, files, purge id


class VersionCheck(BaseModel):
    """One approved version since the request was fulfilled, and whether it kept this person forgotten."""

    version: str
    at: str
    checked: bool  # False: sampled out in that run
    knowledge: float | None = None
    regurgitation: float | None = None
    forget_score: float | None = None
    floor: float | None = None
    still_forgotten: bool | None = None  # None: not checked
    evaluation: str | None = None  # uri#digest of the evaluation that checked it


class ObligationEvidence(BaseModel):
    model_name: str
    state: str  # active / ended / reopened
    fulfilled_by: str
    fulfilled_at: str
    items: int
    original_forget_score: float | None  # the original model on this person
    at_fulfilment_forget_score: float | None
    versions: list[VersionCheck]
    let_back: list[str]  # versions whose check failed: this person came back
    ended: dict[str, str] | None = None  # at, by, why (ended: key destroyed; reopened: by a rollback)
    membership: str = "not re-run on later versions (obligations keep no documents)"


class Evidence(BaseModel):
    request_id: str
    state: str
    subject: str | None  # only when asked for
    ground: str
    received_at: str
    due: str
    extended_months: int
    days_left: int | None  # pending only
    overdue: bool
    answered_at: str | None  # the approval of the version that forgot them
    answered_in_time: bool | None
    runs: list[RunEvidence]
    generated_at: str
    obligations: list[ObligationEvidence] = []  # one per model that fulfilled it


# ---------------------------------------------------------------- figures from per-item results


def _rows(store: ArtifactStore, folder: str, name: str) -> list[dict[str, Any]]:
    import json

    uri = join(folder, name)
    if not store.exists(uri):
        return []
    return [json.loads(line) for line in store.get_bytes(uri).splitlines() if line.strip()]


def _doc(record_id: str) -> str | None:
    m = ID_PATTERN.match(record_id)
    return m["doc"] if m else None


def _means(rows: list[tuple[str, float]]) -> dict[str, float]:
    """(kind, score) -> knowledge / regurgitation / all means, absent kinds left out."""
    out = {}
    for metric, keep in KINDS:
        values = [s for kind, s in rows if keep is None or kind == keep]
        if values:
            out[metric] = sum(values) / len(values)
    return out


def person_figures(store: ArtifactStore, folder: str, documents: set[str]) -> tuple[PersonFigures, dict[str, dict]]:
    """This person's figures in one stored evaluation, and their attack means (variant -> metric -> mean)."""
    items = [i for i in _rows(store, folder, L.ITEMS) if i["set"] == "forget" and _doc(i["id"]) in documents]
    kind = {i["id"]: i["kind"] for i in items}
    figures = PersonFigures(items=len(items), **_means([(i["kind"], i["score"]) for i in items]))
    if items and all("extracted" in i for i in items):
        figures.extraction = sum(bool(i["extracted"]) for i in items) / len(items)
    mia = _rows(store, folder, L.MIA_LOSSES)
    theirs = [r["loss"] for r in mia if r["member"] and r["id"] in documents]
    others = [r["loss"] for r in mia if not r["member"]]
    if theirs and others:
        auc = mia_auc(theirs, others)
        figures = figures.model_copy(update={"mia_auc": auc, "mia_score": mia_score(auc), "documents": len(theirs),
                                             "membership": max(membership_percentile(x, others) for x in theirs)})
    attacked: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in _rows(store, folder, L.ATTACK_ITEMS):
        if row["id"] in kind:
            attacked[row["attack"]].append((kind[row["id"]], row["score"]))
    return figures, {variant: _means(rows) for variant, rows in attacked.items()}


def _recoveries(before: PersonFigures, after: PersonFigures, attacked: dict[str, dict]) -> dict[str, float]:
    from amnesia.science.metrics.aggregate import recovery

    out = {}
    for variant, metrics in sorted(attacked.items()):
        for metric, value in metrics.items():
            b, c = getattr(before, metric), getattr(after, metric)
            if b is not None and c is not None:
                out[f"{variant}.{metric}"] = recovery(b, c, value)
    return out


# ---------------------------------------------------------------- gathering


def _find(queue: RequestQueue, request_id: str) -> tuple[ErasureRequest, str]:
    for state in ("pending", "fulfilled"):
        for r in queue.list(state):  # type: ignore[arg-type]
            if r.request_id == request_id:
                return r, state
    raise RequestError(f"request {request_id}: not in the queue (pending or fulfilled)")


def _evaluations(client: Any, run_id: str) -> dict[str, str]:
    """role -> evaluation folder, from the run's stage runs in MLflow (a run's own folder or a cache entry)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}' and tags.`{Tag.ROLE}` = 'stage'"
    out = {}
    for run in sorted(client.search_runs(experiments, filter_string=query), key=lambda r: r.info.start_time):
        stage = run.data.tags.get(Tag.STAGE, "")
        if stage.startswith("evaluate-") and Tag.EVALUATION_URI in run.data.tags:
            out[stage.removeprefix("evaluate-")] = run.data.tags[Tag.EVALUATION_URI]
    return out


def _run_evidence(
    settings: Settings, store: ArtifactStore, client: Any, root: str, run_id: str, request_id: str
) -> RunEvidence:
    from amnesia.governance.audit import audit
    from amnesia.governance.purge import load_purges, versions_of_run

    run = L.run_root(root, run_id)
    report = store.get_json(L.stage_uri(run, "split", L.SPLIT_REPORT))
    documents = sorted(report.get("request_documents", {}).get(request_id, []))
    verdict_uri = L.stage_uri(run, "gate", L.VERDICT)
    verdict = store.get_json(verdict_uri) if store.exists(verdict_uri) else None
    versions = versions_of_run(client, run_id)
    mv = versions[0] if versions else None
    tags = (mv.tags or {}) if mv else {}
    status = tags.get(Tag.STATUS) or ("gate failed" if verdict and not verdict["passed"] else "no verdict")
    ev = RunEvidence(
        run_id=run_id,
        documents=documents,
        model=f"{mv.name}/{mv.version}" if mv else None,
        status=status,
        gate_passed=verdict["passed"] if verdict else None,
        gate_failed_checks=verdict["codes"] if verdict else [],
        approver=tags.get(APPROVER),
        decided_at=tags.get(DECIDED_AT),
    )
    if mv is not None:
        ev.chain_verified = audit(settings, store, mv.name, str(mv.version)).ok
        purged, _problems = load_purges(store, tags)
        records = {r.purge_id: r for _f, r in purged.values()}
        ev.purged = [{"purge_id": r.purge_id, "by": r.by, "at": r.at, "files": len(r.files)} for r in records.values()]
    folders = _evaluations(client, run_id)
    if "base" in folders and "candidate" in folders:
        before, _ = person_figures(store, folders["base"], set(documents))
        after, attacked = person_figures(store, folders["candidate"], set(documents))
        ev.before, ev.after, ev.recoveries = before, after, _recoveries(before, after, attacked)
    return ev


def evidence(
    settings: Settings, store: ArtifactStore, root: str, request_id: str, show_subject: bool = False
) -> Evidence:
    from amnesia.governance.purge import runs_of_request

    queue = RequestQueue(store, root)
    request, state = _find(queue, request_id)
    due = queue.due([request], state)[0]
    client = registry_client(settings)
    runs = [
        _run_evidence(settings, store, client, root, r, request_id) for r in runs_of_request(store, root, request_id)
    ]
    now = datetime.now(UTC)
    approved = sorted(r.decided_at for r in runs if r.status == "approved" and r.decided_at)
    answered = approved[0] if approved else None
    in_time = None
    if answered:
        in_time = datetime.strptime(answered, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= due.due
    found = Evidence(
        request_id=request_id,
        state=state,
        subject=None,
        ground=request.ground,
        received_at=request.received_at.isoformat(),
        due=due.due.isoformat(),
        extended_months=due.extension.months if due.extension else 0,
        days_left=due.days_left(now) if state == "pending" else None,
        overdue=due.overdue(now),
        answered_at=answered,
        answered_in_time=in_time,
        runs=runs,
        generated_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    found.obligations = _obligations(store, root, request_id)
    if show_subject:
        return found.model_copy(update={"subject": request.subject})
    check_subject_free(found, request.subject)  # the subject may sit inside a document id: then nothing is written
    return found


def _obligations(store: ArtifactStore, root: str, request_id: str) -> list[ObligationEvidence]:
    """The request as a standing obligation of each model, version by version since its fulfilment."""
    from amnesia.storage.obligations import OBLIGATIONS, ObligationStore

    out = []
    models = sorted({u.split(f"/{OBLIGATIONS}/", 1)[1].split("/", 1)[0] for u in store.list(join(root, OBLIGATIONS))})
    for name in models:
        obligations = ObligationStore(store, root, name)
        ob = obligations.get(request_id)
        if ob is None:
            continue
        history = {c.version: c for c in ob.history}
        rows = []
        for entry in obligations.ledger().entries:
            if entry.at < ob.fulfilled_at or entry.version == ob.fulfilled_by:
                continue  # before it was an obligation, or the version that made it one
            c = history.get(entry.version)
            if c is None:
                rows.append(VersionCheck(version=entry.version, at=entry.at, checked=False))
                continue
            rows.append(VersionCheck(version=c.version, at=c.at, checked=True, knowledge=c.scores.knowledge,
                                     regurgitation=c.scores.regurgitation, forget_score=c.scores.forget_score,
                                     floor=c.floor, still_forgotten=c.passed, evaluation=c.evaluation))  # fmt: skip
        out.append(ObligationEvidence(
            model_name=name, state=ob.state, fulfilled_by=ob.fulfilled_by, fulfilled_at=ob.fulfilled_at,
            items=ob.items, original_forget_score=ob.original.forget_score if ob.original else None,
            at_fulfilment_forget_score=ob.at_fulfilment.forget_score if ob.at_fulfilment else None,
            versions=rows, let_back=[r.version for r in rows if r.still_forgotten is False],
            ended=ob.ended.model_dump() if ob.ended else None,
        ))  # fmt: skip
    return out


def _digest(ref: str | None) -> str:
    return (ref or "").rpartition("#")[2][:12]


def _version_line(r: VersionCheck) -> str:
    if not r.checked:
        return f"        v{r.version:<5} {r.at}  not checked (sampled out in that run)"
    word = "still forgotten" if r.still_forgotten else "CAME BACK"
    floor = f" (floor {r.floor:.3f})" if r.floor is not None else ""
    return (f"        v{r.version:<5} {r.at}  {word}: forget score {_fmt(r.forget_score)}{floor}, knowledge "
            f"{_fmt(r.knowledge)}, regurgitation {_fmt(r.regurgitation)}; check {_digest(r.evaluation)}")


def _obligation_lines(o: ObligationEvidence) -> list[str]:
    out = [f"binding {o.model_name}: {o.state} since v{o.fulfilled_by} ({o.fulfilled_at}); {o.items} items; "
           f"forget score original {_fmt(o.original_forget_score)} -> at fulfilment "
           f"{_fmt(o.at_fulfilment_forget_score)}"]
    out += [_version_line(r) for r in o.versions] or ["        no version approved since"]
    if o.let_back:
        out.append(f"        LET BACK by {', '.join('v' + v for v in o.let_back)}")
    if o.ended:
        what = "ended (key destroyed; checks stopped)" if o.state == "ended" else "re-opened"
        out.append(f"        {what} {o.ended['at']} by {o.ended['by']}: {o.ended['why']}")
    out.append(f"        membership test: {o.membership}")
    return out


# ---------------------------------------------------------------- rendering


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _noise(f: PersonFigures) -> str:
    """One person is a small sample: say how coarse their figures are."""
    step = f"each of {f.items} items moves a mean by {1 / f.items:.2f}" if f.items else "no items"
    auc = f"; the MIA AUC ranks {f.documents} document(s) against the non-members" if f.documents else ""
    return f"Small sample: {step}{auc}."


def lines(e: Evidence) -> list[str]:
    """The terminal view."""
    who = f" ({e.subject})" if e.subject else ""
    out = [f"request {e.request_id}{who}: {e.state}, ground Art. 17(1)({e.ground})",
           f"        received {e.received_at}, due {e.due}" + (f" (extended {e.extended_months} months)"
                                                              if e.extended_months else "")]  # fmt: skip
    if e.answered_at:
        out.append(f"        answered {e.answered_at} ({'in time' if e.answered_in_time else 'LATE'})")
    elif e.overdue:
        out.append(f"        OVERDUE by {-(e.days_left or 0)} days")
    for r in e.runs:
        out.append(f"run     {r.run_id}: {len(r.documents)} documents; model {r.model or '—'} ({r.status})")
        if r.before and r.after:
            out.append(f"        {_noise(r.after)}")
            for name in PERSON_ROWS:
                out.append(f"        {name:<14} {_fmt(getattr(r.before, name))} -> {_fmt(getattr(r.after, name))}")
        for name, value in r.recoveries.items():
            out.append(f"        recovery {name:<24} {value:.3f}")
        if r.approver:
            out.append(f"        decided by {r.approver} at {r.decided_at}; chain verified: {r.chain_verified}")
        for p in r.purged:
            out.append(f"        purged {p['at']} by {p['by']} ({p['files']} files)")
    for o in e.obligations:
        out += _obligation_lines(o)
    return out


def to_html(e: Evidence) -> str:
    from amnesia.stages.gate.report import _CSS, _table

    answered = "not yet"
    if e.answered_at:
        answered = f"{e.answered_at} ({'in time' if e.answered_in_time else 'late'})"
    late = e.overdue or e.answered_in_time is False
    word, cls = ("LATE" if late else "ANSWERED" if e.answered_at else "OPEN"), ("fail" if late else "pass")
    facts = [("request", e.request_id), ("state", e.state), ("ground", f"GDPR Art. 17(1)({e.ground})"),
             ("received", e.received_at), ("due", e.due + (f" (extended by {e.extended_months} months)"
                                                          if e.extended_months else "")),
             ("answered", answered), ("generated", e.generated_at)]  # fmt: skip
    if e.subject:
        facts.insert(1, ("subject", e.subject))
    parts = [f"<h1>Erasure request <code>{html.escape(e.request_id)}</code></h1>",
             f'<p><span class="verdict {cls}">{word}</span></p>', _table(["", ""], facts, [False, False])]  # fmt: skip
    for r in e.runs:
        parts.append(f"<h2>Run <code>{html.escape(r.run_id)}</code></h2>")
        about = [
            ("model version", r.model or "none registered"),
            ("status", r.status),
            ("gate", "passed" if r.gate_passed else f"failed: {', '.join(r.gate_failed_checks)}"),
            ("documents forgotten", ", ".join(r.documents)),
            ("decided", f"{r.approver} at {r.decided_at}" if r.approver else "—"),
            ("chain re-verified", "—" if r.chain_verified is None else "yes" if r.chain_verified else "NO"),
        ]
        about += [("purged", f"{p['at']} by {p['by']} ({p['files']} files)") for p in r.purged]  # fmt: skip
        parts.append(_table(["", ""], about, [False, False]))
        if r.before and r.after:
            rows = [(n, _fmt(getattr(r.before, n)), _fmt(getattr(r.after, n)))
                    for n in ("knowledge", "regurgitation", "all", "mia_auc", "mia_score", "extraction", "membership")]
            parts.append(f"<p>This person's {r.after.items} records and {r.after.documents} document(s), before and "
                         f"after. {_noise(r.after)} Extraction: the share of their records that any of the "
                         "evaluation's sampled generations reproduced. Membership: their most member-like document's "
                         "percentile among the non-members (0.5 is a typical non-member, 1.0 a lower loss than every "
                         "one).</p>")  # fmt: skip
            parts.append(_table(["figure", "before", "after"], rows, [False, True, True]))
        if r.recoveries:
            rows = [(k, f"{v:.3f}") for k, v in r.recoveries.items()]
            parts.append("<p>What each attack brought back of what was forgotten (0 = nothing, 1 = all):</p>")
            parts.append(_table(["attack.metric", "recovery"], rows, [False, True]))
    if not e.runs:
        parts.append("<p>No pipeline run has worked on this request yet.</p>")
    for o in e.obligations:
        parts.append(f"<h2>Standing obligation of <code>{html.escape(o.model_name)}</code>: "
                     f"{html.escape(o.state)}</h2>")
        parts.append(f"<p>Fulfilled by version {html.escape(o.fulfilled_by)} at {html.escape(o.fulfilled_at)}; "
                     f"{o.items} items. Forget score on this person: original {_fmt(o.original_forget_score)}, at "
                     f"fulfilment {_fmt(o.at_fulfilment_forget_score)}. Membership test: "
                     f"{html.escape(o.membership)}.</p>")
        rows = [(f"v{r.version}", r.at, "not checked (sampled out)" if not r.checked else
                 "still forgotten" if r.still_forgotten else "CAME BACK", _fmt(r.forget_score), _fmt(r.knowledge),
                 _fmt(r.regurgitation), (r.evaluation or "").rpartition("#")[2][:16]) for r in o.versions]  # fmt: skip
        parts.append(_table(["version", "checked at", "result", "forget score", "knowledge", "regurgitation",
                             "check digest"], rows, [False, False, False, True, True, True, False],
                            ["failed" if r.still_forgotten is False else "" for r in o.versions]))  # fmt: skip
        if o.ended:
            parts.append(f"<p>{'Ended' if o.state == 'ended' else 'Re-opened'} {html.escape(o.ended['at'])} by "
                         f"{html.escape(o.ended['by'])}: {html.escape(o.ended['why'])}.</p>")  # fmt: skip
    head = f"<meta charset=utf-8><title>Erasure request {html.escape(e.request_id)}</title><style>{_CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"


def check_subject_free(e: Evidence, subject: str) -> None:
    """Refuse to emit evidence that names the person when it was not asked to (a subject inside an id)."""
    if subject.casefold() in e.model_dump_json().casefold():
        raise AmnesiaError(f"request {e.request_id}: its evidence would name the subject; not written")
