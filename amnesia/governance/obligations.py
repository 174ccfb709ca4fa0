"""Decisions over time: what an approval makes binding, and what a rollback undoes.

- Approving a version makes each request it fulfilled a standing obligation of the model (sealed prompts and
  fingerprints, amnesia.storage.obligations), with the original model's and this version's figures on that
  person, and records the version's checks of every earlier obligation (their history, and the ledger the
  sampling reads).
- `rollback` moves `champion` back to an earlier approved version: the requests that only the versions it
  leaves had fulfilled go back to pending, and their obligations are marked re-opened.
- `end` destroys an obligation's key: its checks stop, visibly, with who, when and why.
"""

from __future__ import annotations

import json
from typing import Any

from amnesia.core.settings import Settings
from amnesia.governance.identity import Reviewer, authorize
from amnesia.governance.versions import (
    APPROVED,
    BASE_EVALUATION,
    CANDIDATE_EVALUATION,
    CHAMPION,
    PREVIOUS_CHAMPION,
    ROLLBACK_PREFIX,
    RegistryError,
    alias_of,
    get_version,
    registry_client,
)
from amnesia.results.evaluation import Evaluation
from amnesia.results.gate import GateResult
from amnesia.results.plan import RunPlan
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Guard, Tag
from amnesia.storage.obligations import (
    ACTIVE,
    Check,
    LedgerEntry,
    Obligation,
    ObligationStore,
    PersonScores,
    now_stamp,
    person_scores,
)
from amnesia.storage.records import load_records
from amnesia.storage.requests import RequestQueue
from amnesia.storage.uri import join


def _rows(store: ArtifactStore, folder: str, name: str) -> list[dict[str, Any]]:
    uri = join(folder, name)
    if not store.exists(uri):
        return []
    return [json.loads(line) for line in store.get_bytes(uri).splitlines() if line.strip()]


def _person(rows: list[dict[str, Any]], ids: set[str]) -> PersonScores | None:
    mine = [(r["kind"], r["score"]) for r in rows if r["set"] == "forget" and r["id"] in ids]
    return person_scores(mine) if mine else None


def plan_of(store: ArtifactStore, tags: dict[str, str]) -> RunPlan | None:
    """The plan the version's run was made under, beside its preflight (None: a version from before plans)."""
    split_uri = tags.get(Tag.SPLIT_URI)
    if not split_uri:
        return None
    uri = L.stage_uri(split_uri.rsplit("/", 1)[0], "preflight", L.PLAN)
    return RunPlan.model_validate(store.get_json(uri)) if store.exists(uri) else None


def fulfil(
    store: ArtifactStore, root: str, name: str, version: str, tags: dict[str, str], request_ids: list[str]
) -> list[Obligation]:
    """Make the requests this approval fulfilled standing obligations, from the run's split (still stored:
    purge waits for a decision)."""
    split_uri = tags.get(Tag.SPLIT_URI, "")
    if not split_uri or not store.exists(join(split_uri, L.SPLIT_REPORT)):
        return []  # a version registered without a stored split: nothing to check later people by
    report = store.get_json(join(split_uri, L.SPLIT_REPORT))
    records = [r for n in ("forget_train", "forget_eval")
               for r in load_records(join(split_uri, f"{n}.parquet"), allow_empty=True, store=store)]  # fmt: skip
    base_folder = tags.get(BASE_EVALUATION, "").partition("#")[0]
    cand_folder = tags.get(CANDIDATE_EVALUATION, "").partition("#")[0]
    base_rows = _rows(store, base_folder, L.ITEMS) if base_folder else []
    cand_rows = _rows(store, cand_folder, L.ITEMS) if cand_folder else []
    plan = plan_of(store, tags)
    retention = plan.obligation_retention_days if plan else None
    obligations = ObligationStore(store, root, name)
    made = []
    for rid in request_ids:
        docs = set(report.get("request_documents", {}).get(rid, []))
        mine = [r for r in records if r.document_id in docs]
        if not mine:
            continue  # a request that matched nothing (split.unmatched_requests: warn): nothing to keep forgotten
        ids = {r.id for r in mine}
        made.append(obligations.create(rid, sorted(docs), mine, version, tags.get(Tag.PIPELINE_RUN_ID, ""),
                                       retention, _person(base_rows, ids), _person(cand_rows, ids)))  # fmt: skip
    return made


def record_checks(store: ArtifactStore, root: str, name: str, version: str, tags: dict[str, str]) -> LedgerEntry:
    """The approved version's checks of earlier obligations, into their history and the ledger."""
    plan = plan_of(store, tags)
    cand_ref = tags.get(CANDIDATE_EVALUATION, "")
    checked: dict[str, Check] = {}
    if plan is not None and plan.obligations and cand_ref:
        candidate = Evaluation.load(store, cand_ref.partition("#")[0])
        gate = GateResult.load(store, tags[Tag.REPORT_URI])
        results = {c.name: c for c in gate.checks}
        for ref in plan.obligations:
            scores = candidate.obligations.get(ref.request_id)
            check = results.get(f"obligation.{ref.request_id}.forget_score")
            if scores is None:
                continue
            checked[ref.request_id] = Check(
                version=version, run_id=tags.get(Tag.PIPELINE_RUN_ID, ""), at=now_stamp(), scores=scores,
                passed=check.passed if check else True, floor=check.floor if check else None, evaluation=cand_ref,
            )  # fmt: skip
    entry = LedgerEntry(version=version, run_id=tags.get(Tag.PIPELINE_RUN_ID, ""), at=now_stamp(),
                        full=plan.full_check if plan else True, checked=sorted(checked),
                        not_checked=plan.not_checked if plan else [])  # fmt: skip
    ObligationStore(store, root, name).record(entry, checked)
    return entry


def check_not_stale(client: Any, store: ArtifactStore, name: str, version: str, tags: dict[str, str]) -> None:
    """A candidate planned under another champion would undo what the champion since approved did."""
    plan = plan_of(store, tags)
    if plan is None:
        return  # a version from before plans
    planned = plan.champion or "none"
    now = alias_of(client, name, CHAMPION) or "none"
    if planned != now:
        was = "no champion" if planned == "none" else f"v{planned}"
        raise RegistryError(
            f"{name} version {version}: stale base: it was planned when the champion was {was}, and the champion "
            f"is now v{now}; run the pipeline again"
        )


# ---------------------------------------------------------------- rollback


def _chain(client: Any, name: str, start: str, target: str) -> list[str]:
    """The champions from `start` back to (not including) `target`, by each approval's previous champion."""
    left, at = [], start
    while at != target:
        left.append(at)
        previous = (get_version(client, name, at).tags or {}).get(PREVIOUS_CHAMPION, "none")
        if previous in ("none", "") or previous in left:
            raise RegistryError(
                f"{name} version {target} was not champion before version {start}; nothing to roll back to"
            )
        at = previous
    return left


def rollback(
    settings: Settings, store: ArtifactStore, root: str, name: str, version: str, reviewer: Reviewer, note: str
) -> dict[str, Any]:
    """Move `champion` back to an earlier approved version; re-open what only the versions it leaves fulfilled."""
    if not note.strip():
        raise RegistryError("a rollback needs a note (--note): say why")
    client = registry_client(settings)
    target = get_version(client, name, version)
    if (target.tags or {}).get(Tag.STATUS) != APPROVED:
        raise RegistryError(f"{name} version {version} was never approved; only an approved version can be champion")
    current = alias_of(client, name, CHAMPION)
    if current is None or current == str(version):
        raise RegistryError(f"{name} version {version} is already champion" if current else f"{name} has no champion")
    authorize(reviewer, name, version, "")  # MANAGE on the model; the runner of no run is involved
    Guard().check("tag", "by", reviewer.user)
    left = _chain(client, name, current, str(version))
    obligations = ObligationStore(store, root, name)
    queue = RequestQueue(store, root)
    why = f"rollback of {name} from v{current} to v{version}"
    reopened = []
    for ob in obligations.list(ACTIVE):
        if ob.fulfilled_by in left:
            obligations.reopen(ob.request_id, reviewer.user, why)
            if (queue.find(ob.request_id) or ("", None))[0] == "fulfilled":
                queue.reopen(ob.request_id, why, reviewer.user)
            reopened.append(ob.request_id)
    at = now_stamp()
    record = {"name": name, "from": current, "to": str(version), "left": left, "reopened": reopened,
              "by": reviewer.user, "authenticated_by": reviewer.via, "note": note, "at": at}  # fmt: skip
    uri = join(root, L.REGISTRY, name, "rollbacks", f"{at.replace(':', '')}-v{current}-to-v{version}.json")
    ref = store.put_json(record, uri)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    stamp = at.replace(":", "").replace("-", "")
    client.set_model_version_tag(name, str(version), f"{ROLLBACK_PREFIX}{stamp}",
                                 f"from:{current},by:{reviewer.user},at:{at},record:{uri}#{ref.digest}")  # fmt: skip
    return record | {"uri": uri}


def end(store: ArtifactStore, root: str, name: str, request_id: str, by: str, why: str) -> Obligation:
    """End one obligation: its key is destroyed, so neither its prompts nor its fingerprints open again."""
    return ObligationStore(store, root, name).end(request_id, by, why)
