"""Stage 6 — register, and the human steps after it: approve, reject, history.

A passing candidate becomes an MLflow model version (source: its S3 folder) tagged with everything an
auditor needs, under alias `candidate`, status `pending_approval`. Only a person other than the one who
ran the pipeline can approve it (an authenticated MLflow user with MANAGE on the model: amnesia.governance.identity),
and only after the version's whole chain re-verifies against its
recorded digests and the stored gate verdict passed (tags alone are never trusted): that moves alias
`champion` (and takes `candidate` off), records the previous champion, and moves the fulfilled requests
out of the queue. Reviewer notes are free text (they may name a person), so they
live in the artifact store; MLflow holds their URI and sha256.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from amnesia import __version__
from amnesia.core.settings import Settings
from amnesia.governance.identity import Reviewer, authorize
from amnesia.governance.versions import (
    APPROVED,
    APPROVER,
    APPROVER_AUTH,
    BASE_EVALUATION,
    CANDIDATE,
    CANDIDATE_EVALUATION,
    CHAMPION,
    DECIDED_AT,
    LOGGED_MODEL,
    NOTE_SHA256,
    NOTE_URI,
    NOTIFIED,
    PENDING,
    PREVIOUS_CHAMPION,
    REJECTED,
    REPORT_DIGEST,
    ROLLBACK_PREFIX,
    RUNNER,
    RegistryError,
    alias_of,
    check_known,
    figures,
    find_version,
    get_version,
    registry_client,
)
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.layout import REGISTRY, REQUESTS_SNAPSHOT
from amnesia.storage.lineage import Guard, Tag, code_version, runner_identity
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join

if TYPE_CHECKING:  # the stage results; imported for types only (they pull in torch)
    from amnesia.results.evaluation import Evaluation
    from amnesia.results.gate import GateResult
    from amnesia.results.plan import RunPlan
    from amnesia.results.split import SplitResult
    from amnesia.results.trace import TraceResult
    from amnesia.results.unlearn import UnlearnResult

class Registration(BaseModel):
    name: str
    version: str
    created: bool  # False: this request digest + base model already had a version
    source: str


# Version tags hold what identifies the lineage (ids, digests, URIs), the verdict, the status and the
# decision. These describe rather than identify: they go to the version's LoggedModel as params, beside
# its figures (metrics), where MLflow's model page shows them.
DESCRIPTIVE = (Tag.REQUEST_COUNT, Tag.IMAGE, Tag.CODE_VERSION, Tag.MODEL_URI, Tag.START_MODE, Tag.OBLIGATIONS_CHECKED)


def _experiment_id(client: Any, settings: Settings, run_id: str | None) -> str:
    if run_id:
        return str(client.get_run(run_id).info.experiment_id)
    found = client.get_experiment_by_name(settings.experiment)
    return str(found.experiment_id if found else client.create_experiment(settings.experiment))


def _logged_model(
    client: Any, settings: Settings, name: str, run_id: str | None, params: dict[str, str], metrics: dict[str, float]
) -> str:
    """The version's LoggedModel (MLflow 3): its params and figures. Metrics are logged through a run:
    the pipeline's parent run, or a short registration run when there is none."""
    from mlflow.entities import Metric

    experiment = _experiment_id(client, settings, run_id)
    own_run = run_id is None
    if own_run:
        run_id = client.create_run(
            experiment, tags={"mlflow.runName": f"register-{name}", Tag.ROLE: "register"}
        ).info.run_id
    model = client.create_logged_model(experiment, name=name, source_run_id=run_id, params=params)
    now = int(datetime.now(UTC).timestamp() * 1000)
    items = [Metric(k, float(v), now, 0, model_id=model.model_id) for k, v in sorted(metrics.items())]
    for start in range(0, len(items), 500):  # log_batch's limit
        client.log_batch(run_id, metrics=items[start : start + 500])
    client.finalize_logged_model(model.model_id, "READY")
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    return str(model.model_id)


def register(
    settings: Settings,
    name: str,
    source: str,
    tags: dict[str, Any],
    metrics: dict[str, float],
    gate_passed: bool,
    run_id: str | None = None,
) -> Registration:
    """Create the version (or find the existing one) and point alias `candidate` at it. `tags` must hold
    the request digest and the base model digest: they are the idempotency key. Figures and descriptive
    settings go to the version's LoggedModel, not its tags."""
    if not gate_passed:
        raise RegistryError(f"{name}: refusing to register a candidate that did not pass its gate")
    for key in (Tag.REQUEST_DIGEST, Tag.BASE_MODEL_DIGEST):
        if not tags.get(key):
            raise RegistryError(f"{name}: registration needs tag {key}")
    client = registry_client(settings)
    guard = Guard()
    safe = {k: guard.check("tag", k, v) for k, v in tags.items() if k not in DESCRIPTIVE}
    safe |= {Tag.STATUS: PENDING, RUNNER: guard.check("tag", RUNNER, runner_identity())}
    params = {k: guard.check("param", k, v) for k, v in tags.items() if k in DESCRIPTIVE}
    params[Tag.CODE_VERSION] = code_version()
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Selective Amnesia candidates and champions.")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    existing = find_version(client, name, tags[Tag.REQUEST_DIGEST], tags[Tag.BASE_MODEL_DIGEST],
                            tags.get(Tag.START_MODEL_DIGEST, tags[Tag.BASE_MODEL_DIGEST]))  # fmt: skip
    if existing is not None:
        return Registration(name=name, version=str(existing.version), created=False, source=existing.source)
    # The version's source stays the S3 folder the audit re-hashes (a `models:/<id>` source would move
    # the weights into MLflow's artifact store); the LoggedModel is linked by its id, a tag.
    safe[LOGGED_MODEL] = _logged_model(client, settings, name, run_id, params, metrics)
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=safe)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    return Registration(name=name, version=str(mv.version), created=True, source=source)


def _decide(
    settings: Settings,
    store: ArtifactStore,
    root: str,
    name: str,
    version: str,
    reviewer: Reviewer,
    note: str,
    what: str,
) -> tuple[Any, Any, dict[str, str]]:
    client = registry_client(settings)
    mv = get_version(client, name, version)
    tags = mv.tags or {}
    if not note.strip():
        raise RegistryError("a decision needs a note (--note): say what was checked")
    if tags.get(Tag.STATUS) != PENDING:
        raise RegistryError(
            f"{name} version {version} is {tags.get(Tag.STATUS, 'not registered by amnesia')}, not pending"
        )
    authorize(reviewer, name, version, tags.get(RUNNER, ""))
    if what == APPROVED:
        from amnesia.governance.obligations import check_not_stale

        check_not_stale(client, store, name, version, tags)
    if what == APPROVED and not verified_gate(settings, store, name, version):
        raise RegistryError(f"{name} version {version} did not pass its gate (stored verdict); it cannot be approved")
    Guard().check("tag", APPROVER, reviewer.user)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {"name": name, "version": version, "decision": what, "reviewer": reviewer.user,
              "authenticated_by": reviewer.via, "note": note, "at": when}  # fmt: skip
    note_uri = join(root, REGISTRY, name, f"v{version}", f"{what}.json")
    ref = store.put_json(record, note_uri)
    decided = {Tag.STATUS: what, APPROVER: reviewer.user, APPROVER_AUTH: reviewer.via, DECIDED_AT: when,
               NOTE_URI: note_uri, NOTE_SHA256: ref.digest}  # fmt: skip
    return client, mv, decided


def verified_gate(settings: Settings, store: ArtifactStore, name: str, version: str) -> bool:
    """The gate's verdict as stored in its digest-checked report, after the whole chain re-verifies
    (`amnesia audit`): a version's tags are editable by anyone who can write to MLflow, its stored
    artifacts are checked against digests recorded when they were made."""
    from amnesia.governance.audit import audit  # the audit reads the registry's tag names

    checked = audit(settings, store, name, version)
    broken = [link for link in checked.links if not link.ok and link.step != "approval"]
    if broken:
        first = broken[0]
        why = first.detail.get("error") or f"recorded {first.expected}, found {first.actual}"
        raise RegistryError(
            f"{name} version {version}: its chain does not verify at '{first.step}' ({why}); "
            f"see `amnesia audit {name} {version}`"
        )
    gate = next(link for link in checked.links if link.step == "gate")
    return bool(gate.detail["passed"])


def approve(
    settings: Settings, store: ArtifactStore, root: str, name: str, version: str, reviewer: Reviewer, note: str
) -> dict[str, str]:
    """Promote a pending version to `champion` (it loses `candidate`) once its chain re-verifies, its stored
    gate verdict passed and the champion it was planned under is still champion; its requests become
    standing obligations, and its checks of the earlier ones are recorded. Returns the tags set."""
    from amnesia.governance import obligations

    client, mv, tags = _decide(settings, store, root, name, version, reviewer, note, APPROVED)
    tags[PREVIOUS_CHAMPION] = alias_of(client, name, CHAMPION) or "none"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHAMPION, version)
    if alias_of(client, name, CANDIDATE) == str(version):  # decided: no longer a candidate
        client.delete_registered_model_alias(name, CANDIDATE)
    split_uri = (mv.tags or {}).get(Tag.SPLIT_URI)
    if split_uri and store.exists(join(split_uri, REQUESTS_SNAPSHOT)):
        ids = [r.request_id for r in load_requests_uri(store, join(split_uri, REQUESTS_SNAPSHOT))]
        pending = {r.request_id for r in RequestQueue(store, root).list("pending")}
        fulfilled = [i for i in ids if i in pending]
        RequestQueue(store, root).fulfil(fulfilled)
        obligations.record_checks(store, root, name, str(version), mv.tags or {})  # before: they are the earlier ones
        obligations.fulfil(store, root, name, str(version), mv.tags or {}, fulfilled)
    return tags


def reject(
    settings: Settings, store: ArtifactStore, root: str, name: str, version: str, reviewer: Reviewer, note: str
) -> dict[str, str]:
    """Mark a pending version rejected; it loses alias `candidate` if it held it. Requests stay pending."""
    client, _mv, tags = _decide(settings, store, root, name, version, reviewer, note, REJECTED)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if alias_of(client, name, CANDIDATE) == str(version):
        client.delete_registered_model_alias(name, CANDIDATE)
    return tags


PENDING_FIGURES = ("forget_score", "retain_score", "held_out_retain_score", "mmlu")


def pending(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """Versions awaiting a decision (every model's, or one's), oldest first: what a reviewer's queue shows."""
    client = registry_client(settings)
    if name:
        check_known(client, name)
    query = f"tags.`{Tag.STATUS}` = '{PENDING}'" + (f" and name = '{name}'" if name else "")
    now = datetime.now(UTC).timestamp()
    rows = []
    for mv in client.search_model_versions(query):
        tags = mv.tags or {}
        got = figures(client, mv)
        rows.append(
            {
                "name": mv.name,
                "version": str(mv.version),
                "gate": "passed" if tags.get(Tag.GATE_PASSED) == "true" else "not passed",
                "figures": {k: got[k] for k in PENDING_FIGURES if k in got},
                "base_figures": {k: got[f"base.{k}"] for k in PENDING_FIGURES if f"base.{k}" in got},
                "split_uri": tags.get(Tag.SPLIT_URI, ""),
                "age_s": max(0.0, now - mv.creation_timestamp / 1000),
                "pipeline_run_id": tags.get(Tag.PIPELINE_RUN_ID, ""),
                "runner": tags.get(RUNNER, ""),
            }
        )
    return sorted(rows, key=lambda r: -r["age_s"])


def history(settings: Settings, name: str) -> list[dict[str, str]]:
    """Every decision on the model's versions, oldest first: version, status, reviewer, time, previous champion
    (a rollback is a row of its own: champion moved back to the version, from the previous one)."""
    client = registry_client(settings)
    check_known(client, name)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        for key in sorted(k for k in tags if k.startswith(ROLLBACK_PREFIX)):
            fields = dict(part.split(":", 1) for part in tags[key].split(","))
            rows.append({"version": str(mv.version), "status": "rollback", "reviewer": fields.get("by", ""),
                         "authenticated_by": "mlflow", "at": fields.get("at", ""),
                         "previous_champion": fields.get("from", ""),
                         "note_sha256": fields.get("record", "").rpartition("#")[2]})  # fmt: skip
        if tags.get(Tag.STATUS) in (APPROVED, REJECTED):
            rows.append(
                {
                    "version": str(mv.version),
                    "status": tags[Tag.STATUS],
                    "reviewer": tags.get(APPROVER, ""),
                    "authenticated_by": tags.get(APPROVER_AUTH, "not recorded"),
                    "at": tags.get(DECIDED_AT, ""),
                    "previous_champion": tags.get(PREVIOUS_CHAMPION, ""),
                    "note_sha256": tags.get(NOTE_SHA256, ""),
                }
            )
    return sorted(rows, key=lambda r: (r["at"], int(r["version"])))


def register_candidate(
    settings: Settings,
    name: str,
    pipeline_run_id: str,
    split: SplitResult,
    trace: TraceResult | None,
    unlearn: UnlearnResult,
    base: Evaluation,
    candidate: Evaluation,
    gate: GateResult,
    parent_run_id: str | None = None,
    plan: RunPlan | None = None,
) -> Registration:
    """Register a gated candidate with the whole chain as tags (what `amnesia audit` reads back); the base
    model is the original (before any unlearning), the start model what this run unlearned from."""
    from amnesia.results.figures import scores
    from amnesia.results.gate import tag_codes

    request_digest = split.request_digest or split.digest  # SemEval-mode runs: the data is the request
    tags: dict[str, Any] = {
        Tag.PIPELINE_RUN_ID: pipeline_run_id,
        Tag.REQUEST_DIGEST: request_digest,
        Tag.REQUEST_IDS_DIGEST: hashlib.sha256("\n".join(split.request_ids).encode()).hexdigest(),
        Tag.REQUEST_COUNT: len(split.request_ids),
        Tag.SPLIT_URI: split.uri,
        Tag.SPLIT_DIGEST: split.digest,
        Tag.BASE_MODEL_URI: base.model_uri,
        Tag.BASE_MODEL_DIGEST: base.model_digest or "none",
        Tag.LAYERS: ",".join(map(str, unlearn.layers)),
        Tag.METHOD: unlearn.method,
        Tag.CONFIG_HASH: unlearn.config_hash,
        Tag.MODEL_URI: unlearn.uri,
        Tag.MODEL_DIGEST: unlearn.digest,
        Tag.GATE_PASSED: str(gate.passed).lower(),
        Tag.GATE_REASONS: tag_codes(gate.checks),
        Tag.REPORT_URI: gate.report_uri,
        REPORT_DIGEST: gate.report_digest,
        BASE_EVALUATION: f"{base.uri}#{base.digest}",
        CANDIDATE_EVALUATION: f"{candidate.uri}#{candidate.digest}",
        Tag.IMAGE: os.environ.get("AMNESIA_IMAGE_REF", f"{settings.image}:{__version__}"),
    }
    if trace is not None:
        tags |= {Tag.TRACE_URI: trace.uri, Tag.TRACE_DIGEST: trace.digest, Tag.LAYER_RULE: trace.rule}
    if plan is not None:
        # The base model is the original; the plan (beside the run's preflight) holds the rest. A version
        # unlearned from a champion names it (no start tags: from the original).
        tags |= {Tag.START_MODE: plan.mode, Tag.OBLIGATIONS_CHECKED: len(plan.obligations)}
        if plan.start_version:
            tags |= {Tag.START_VERSION: plan.start_version, Tag.START_MODEL_DIGEST: plan.start_digest or "none"}
    metrics = {k: v for k, v in scores(candidate).items() if v is not None}
    metrics |= {f"drift.{k}": v for k, v in candidate.drift.items()}  # weight drift from the original / champion
    metrics |= {f"base.{k}": v for k, v in scores(base).items() if v is not None}
    done = register(settings, name, unlearn.uri, tags, metrics, gate.passed, parent_run_id)
    if done.created and settings.webhook_urls():
        tell(settings, done, metrics, pipeline_run_id=pipeline_run_id, requests=len(split.request_ids),
             request_ids_digest=tags[Tag.REQUEST_IDS_DIGEST], gate="passed")  # fmt: skip
    return done


def tell(settings: Settings, done: Registration, figures: dict[str, float], **ids: Any) -> None:
    """Notify the reviewers' webhooks of a new candidate; the version records how many were told."""
    from amnesia.governance.notify import candidate_event, notify

    sent = notify(settings, candidate_event(settings, done.name, done.version, figures, **ids))
    client = registry_client(settings)
    client.set_model_version_tag(done.name, done.version, NOTIFIED, f"{sum(d.ok for d in sent)}/{len(sent)}")
