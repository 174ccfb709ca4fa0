"""`amnesia audit NAME VERSION`: rebuild a model version's chain from MLflow and the store, and re-hash
every stored artifact it names against the digest recorded when it was made.

The chain: requests → split (data) → base model → trace (layers) → training config → candidate model →
evaluations (before/after) → gate and report → approval, and any attack run on demand since. Any
artifact that is missing or whose bytes no longer match its recorded digest makes the audit fail.
"""

from __future__ import annotations

import hashlib
import html
import json
from typing import Any

from pydantic import BaseModel

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.governance.purge import Purged, load_purges
from amnesia.governance.versions import (
    APPROVER,
    APPROVER_AUTH,
    ATTACK_PREFIX,
    BASE_EVALUATION,
    CANDIDATE_EVALUATION,
    DECIDED_AT,
    NOTE_SHA256,
    NOTE_URI,
    PURGE_PREFIX,
    REPORT_DIGEST,
    figures,
    get_version,
    registry_client,
)
from amnesia.science.metrics.registry import headline
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import load_requests_uri, request_digest
from amnesia.storage.sealing import DataKeyError
from amnesia.storage.uri import join


class Link(BaseModel):
    step: str
    what: str
    uri: str | None
    expected: str | None
    actual: str | None
    ok: bool
    detail: dict[str, Any] = {}


class Audit(BaseModel):
    name: str
    version: str
    status: str
    ok: bool
    links: list[Link]
    metrics: dict[str, str]


def _folder(
    store: ArtifactStore, step: str, what: str, uri: str | None, expected: str | None, purged: Purged | None = None
) -> Link:
    """Re-hash every object of a stored folder against its manifest, and the manifest against the record.
    Files a recorded purge deleted (with the digest the manifest holds) count as purged, not missing."""
    if not uri or not expected:
        return Link(
            step=step, what=what, uri=uri, expected=expected, actual=None, ok=False, detail={"error": "not recorded"}
        )
    purged = purged or {}
    try:
        manifest, gone = store.verify_except(uri, {u: f.sha256 for u, (f, _r) in purged.items()})
    except AmnesiaError as err:
        return Link(step=step, what=what, uri=uri, expected=expected, actual=None, ok=False, detail={"error": str(err)})
    link = Link(
        step=step, what=what, uri=uri, expected=expected, actual=manifest.digest, ok=manifest.digest == expected
    )
    if gone:
        records = {purged[join(uri, p)][1].purge_id: purged[join(uri, p)][1] for p in gone}
        link.what += "; " + "; ".join(f"personal files purged on {r.at[:10]} by {r.by}" for r in records.values())
        link.detail["purged"] = gone
    return link


def audit(settings: Settings, store: ArtifactStore, name: str, version: str) -> Audit:
    client = registry_client(settings)
    mv = get_version(client, name, version)
    t = mv.tags or {}
    purged, problems = load_purges(store, t)
    links = [_requests(store, t, purged)]
    links.append(
        _folder(store, "data", "split sets (forget/retain/MIA)", t.get(Tag.SPLIT_URI), t.get(Tag.SPLIT_DIGEST), purged)
    )
    links.append(
        _folder(store, "base model", "base model folder", t.get(Tag.BASE_MODEL_URI), t.get(Tag.BASE_MODEL_DIGEST))
    )
    if t.get(Tag.START_VERSION, "none") != "none":  # an incremental run: the champion it was unlearned from
        start = get_version(client, name, t[Tag.START_VERSION]).source
        what = f"start model (v{t[Tag.START_VERSION]}, the champion then)"
        links.append(_folder(store, "start model", what, start, t.get(Tag.START_MODEL_DIGEST)))
    trace = _folder(store, "trace", "causal trace", t.get(Tag.TRACE_URI), t.get(Tag.TRACE_DIGEST), purged)
    if trace.ok:
        agg = store.get_json(join(trace.uri or "", L.TRACE_AGGREGATE))
        layers = agg["layers"]
        trace.detail |= {"layers": layers, "rule": t.get(Tag.LAYER_RULE), "unlearned_layers": t.get(Tag.LAYERS)}
        trace.detail |= {k: agg[k] for k in ("method", "group", "confidence", "warning") if agg.get(k) is not None}
        trace.ok = ",".join(map(str, layers)) == t.get(Tag.LAYERS) or t.get(Tag.LAYER_RULE) == "explicit"
    links.append(trace)
    model = _folder(store, "candidate", "unlearned model folder", mv.source, t.get(Tag.MODEL_DIGEST))
    if model.ok:
        summary = store.get_json(join(mv.source, L.UNLEARN_SUMMARY))
        model.detail = {
            k: summary[k] for k in ("method", "config_hash", "layers", "steps", "stopped", "trainable_params")
        }
        model.ok = summary["config_hash"] == t.get(Tag.CONFIG_HASH) and summary["method"] == t.get(Tag.METHOD)
    links.append(model)
    for step, key in (("evaluation before", BASE_EVALUATION), ("evaluation after", CANDIDATE_EVALUATION)):
        uri, _, digest = (t.get(key) or "#").partition("#")
        link = _folder(store, step, "per-item results", uri or None, digest or None, purged)
        if link.ok:
            result = store.get_json(join(uri, L.RESULT))
            stored = result.get("metrics", result)  # evidence stored before the metric registry: top level
            link.detail |= {k: stored[k] for k in headline() if k in stored}
        links.append(link)
    gate = _folder(store, "gate", "report and verdict", t.get(Tag.REPORT_URI), t.get(REPORT_DIGEST))
    if gate.ok:
        verdict = store.get_json(join(gate.uri or "", L.VERDICT))
        gate.detail = {
            "passed": verdict["passed"],
            "failed_checks": verdict["codes"],
            "checks": t.get(Tag.GATE_REASONS),
        }
        gate.ok = str(verdict["passed"]).lower() == t.get(Tag.GATE_PASSED)
    links.append(gate)
    links.append(_decision(store, t))
    links += _attacks(store, t)
    links += _purges(t, purged, problems)
    metrics = {k: f"{v:.6g}" for k, v in figures(client, mv).items()}
    status = t.get(Tag.STATUS, "unknown")
    return Audit(
        name=name, version=str(version), status=status, ok=all(link.ok for link in links), links=links, metrics=metrics
    )


def _requests(store: ArtifactStore, t: dict[str, str], purged: Purged) -> Link:
    split = t.get(Tag.SPLIT_URI)
    uri = join(split, L.REQUESTS_SNAPSHOT) if split else None
    expected = t.get(Tag.REQUEST_DIGEST)
    if uri in purged and not store.exists(uri):  # the data link checks its digest against the manifest
        record = purged[uri][1]
        report = join(split or "", L.SPLIT_REPORT)
        ids = store.get_json(report).get("request_ids", []) if store.exists(report) else []
        return Link(step="requests", what=f"erasure requests snapshot, purged on {record.at[:10]} by {record.by}",
                    uri=uri, expected=expected, actual=None, ok=True,
                    detail={"request_ids": ids, "count": len(ids), "purged": [L.REQUESTS_SNAPSHOT]})  # fmt: skip
    if not uri or not store.exists(uri):  # a SemEval-mode run: the split digest is the request digest
        ok = expected == t.get(Tag.SPLIT_DIGEST)
        return Link(step="requests", what="no request file (data given directly)", uri=None, expected=expected,
                    actual=t.get(Tag.SPLIT_DIGEST), ok=ok)  # fmt: skip
    try:
        reqs = load_requests_uri(store, uri)
    except DataKeyError as err:  # no key (a read-only auditor): the data link verified the sealed bytes
        return Link(step="requests", what="erasure requests snapshot (sealed; verified as ciphertext by 'data')",
                    uri=uri, expected=expected, actual=None, ok=True, detail={"not_opened": str(err)})  # fmt: skip
    actual = request_digest(reqs)
    detail = {"request_ids": [r.request_id for r in reqs], "count": len(reqs)}
    return Link(step="requests", what="erasure requests snapshot", uri=uri, expected=expected, actual=actual,
                ok=actual == expected, detail=detail)  # fmt: skip


def _attacks(store: ArtifactStore, t: dict[str, str]) -> list[Link]:
    """Each on-demand attack run (`amnesia attack`): its folder re-hashed, its worst recoveries shown."""
    links = []
    for key in sorted(k for k in t if k.startswith(ATTACK_PREFIX)):  # oldest first: the keys are times
        uri, _, digest = t[key].partition("#")
        link = _folder(store, "attack", "attacks run on demand", uri, digest or None)
        if link.ok:
            result = store.get_json(join(uri, L.RESULT))
            link.detail = result["worst"] | {"failed": [c["name"] for c in result["checks"] if not c["passed"]]}
        links.append(link)
    return links


def _purges(t: dict[str, str], purged: Purged, problems: list[str]) -> list[Link]:
    """Each purge of this version's personal data: who, when, what; a record missing or changed fails."""
    records = {r.purge_id: r for _f, r in purged.values()}
    links = []
    for key in sorted(k for k in t if k.startswith(PURGE_PREFIX)):
        uri, _, digest = t[key].partition("#")
        record = records.get(key.removeprefix(PURGE_PREFIX))
        if record is None:
            why = next((p for p in problems if uri in p), "no files recorded")
            links.append(Link(step="purge", what="purge record", uri=uri, expected=digest, actual=None,
                              ok=why == "no files recorded", detail={"error": why}))  # fmt: skip
            continue
        detail = {"by": record.by, "at": record.at, "why": record.why, "runs": record.runs}
        detail |= {"requests": record.requests, "files": len(record.files), "keys_destroyed": record.key_ids}
        links.append(Link(step="purge", what=f"personal data purged on {record.at[:10]} by {record.by}", uri=uri,
                          expected=digest, actual=digest, ok=True, detail=detail))  # fmt: skip
    return links


def _decision(store: ArtifactStore, t: dict[str, str]) -> Link:
    status = t.get(Tag.STATUS)
    if status not in ("approved", "rejected"):
        return Link(step="approval", what=f"not decided yet ({status})", uri=None, expected=None, actual=None, ok=True)
    uri, expected = t.get(NOTE_URI), t.get(NOTE_SHA256)
    try:
        actual = hashlib.sha256(store.get_bytes(uri or "")).hexdigest()
    except AmnesiaError as err:
        return Link(step="approval", what="decision record", uri=uri, expected=expected, actual=None, ok=False,
                    detail={"error": str(err)})  # fmt: skip
    detail = {"decision": status, "by": t.get(APPROVER), "authenticated_by": t.get(APPROVER_AUTH, "not recorded"),
              "at": t.get(DECIDED_AT)}  # fmt: skip
    return Link(step="approval", what="decision record (reviewer's note)", uri=uri, expected=expected, actual=actual,
                ok=actual == expected, detail=detail)  # fmt: skip


def to_html(a: Audit) -> str:
    def row(link: Link) -> str:
        cells = [link.step, link.what, link.uri or "", (link.expected or "")[:16], "verified" if link.ok else "FAILED",
                 json.dumps(link.detail)]  # fmt: skip
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        return f"<tr class={'ok' if link.ok else 'bad'}>{tds}</tr>"

    css = "body{font-family:sans-serif;margin:2rem} td{border:1px solid #ccc;padding:.3rem;font-size:.85rem}"
    css += " .bad{background:#fdecea}"
    head = f"<h1>Audit of {html.escape(a.name)} v{html.escape(a.version)}: {'OK' if a.ok else 'FAILED'}</h1>"
    ths = "".join(f"<th>{h}</th>" for h in ("step", "what", "uri", "digest", "check", "detail"))
    table = f"<table><tr>{ths}</tr>{''.join(row(link) for link in a.links)}</table>"
    return (
        f"<!doctype html><html><head><meta charset=utf-8><style>{css}</style></head><body>{head}{table}</body></html>"
    )
