"""`amnesia purge`: after a decision, destroy what a run kept of the people it made a model forget.

For each run: its data key is destroyed (every sealed copy becomes unreadable at once), then the files
amnesia.storage.layout marks personal are deleted — in the run's folder and in the evaluation folders it used
(cache entries included). What stays is the evidence: ids, digests, metrics, manifests, plots of
aggregates. The purge is recorded in the store (`<root>/purges/<id>.json`: who, when, which runs and
requests, every file with the digest it had) and in MLflow (a tag on each model version and on the run),
so `amnesia audit` accepts exactly those files as gone and still fails on any other change.

Refused while a run's model version waits for a decision: the reviewer must be able to read the evidence.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.governance.versions import (
    APPROVED,
    BASE_EVALUATION,
    CANDIDATE_EVALUATION,
    DECIDED_AT,
    PURGE_PREFIX,
    REJECTED,
    registry_client,
)
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag, runner_identity
from amnesia.storage.sealing import run_key_id
from amnesia.storage.uri import MANIFEST_NAME, join

RETENTION = "retention-policy"  # who purges when the configured retention period ends


class PurgeError(AmnesiaError):
    """A purge is refused or its target is unknown; the message says which run or request and why."""


class PurgedFile(BaseModel):
    uri: str
    size: int
    sha256: str  # of the stored bytes (the ciphertext when sealed): what the manifests recorded


class PurgeRecord(BaseModel):
    purge_id: str
    by: str
    at: str
    why: str  # "run", "request" or "retention"
    runs: list[str]
    requests: list[str]
    versions: list[str]  # name/version of the model versions these runs made
    key_ids: list[str]  # data keys destroyed
    files: list[PurgedFile]


# ---------------------------------------------------------------- what a run made


def versions_of_run(client: Any, run_id: str) -> list[Any]:
    """The model versions a pipeline run registered."""
    return list(client.search_model_versions(f"tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}'"))


def _check_decided(client: Any, store: ArtifactStore, root: str, run_id: str) -> list[Any]:
    """The run's model versions, once every one is decided; or none, when its gate failed."""
    versions = versions_of_run(client, run_id)
    for mv in versions:
        status = (mv.tags or {}).get(Tag.STATUS)
        if status not in (APPROVED, REJECTED):
            raise PurgeError(f"run {run_id}: {mv.name} version {mv.version} is {status}; decide it before purging")
    if not versions:
        verdict = L.stage_uri(L.run_root(root, run_id), "gate", L.VERDICT)
        if not store.exists(verdict):
            raise PurgeError(f"run {run_id}: no gate verdict and no model version (unknown, failed early or running)")
        if store.get_json(verdict)["passed"]:
            raise PurgeError(f"run {run_id}: passed its gate but registered no model version (still running?)")
    return versions


def _folders(store: ArtifactStore, root: str, run_id: str, versions: list[Any]) -> list[str]:
    """Every stored folder the run wrote or scored with: its own, and the evaluation cache entries."""
    run = L.run_root(root, run_id)
    folders = {u.rsplit("/", 1)[0] for u in store.list(run) if u.endswith("/" + MANIFEST_NAME)}
    for mv in versions:
        for key in (BASE_EVALUATION, CANDIDATE_EVALUATION):
            uri = (mv.tags or {}).get(key, "").partition("#")[0]
            if uri:
                folders.add(uri)
    key = run_key_id(run_id)
    for manifest in store.list(join(root, L.EVALUATION_CACHE)):  # entries this run sealed (no version needed)
        if manifest.endswith("/" + MANIFEST_NAME):
            folder = manifest.rsplit("/", 1)[0]
            with contextlib.suppress(AmnesiaError):
                if any(e.key_id == key for e in store.read_manifest(folder).files):
                    folders.add(folder)
    return sorted(folders)


def _personal_files(store: ArtifactStore, folders: list[str], run: str) -> list[PurgedFile]:
    """The personal files of these folders as their manifests recorded them, and any other personal object
    under the run's folder (an upload that never finished has no manifest): hashed as they are now."""
    out = []
    for folder in folders:
        try:
            manifest = store.read_manifest(folder)
        except AmnesiaError:
            continue
        out += [PurgedFile(uri=join(folder, e.path), size=e.size, sha256=e.sha256)
                for e in manifest.files if L.personal(join(folder, e.path))]  # fmt: skip
    known = {f.uri for f in out}
    for uri in store.list(run):
        if L.personal(uri) and uri not in known:
            size, digest = store.hash_object(uri)
            out.append(PurgedFile(uri=uri, size=size, sha256=digest))
    return out


def runs_of_request(store: ArtifactStore, root: str, request_id: str) -> list[str]:
    """The runs whose split worked on this request (from their split reports: ids only)."""
    found = []
    for uri in store.list(join(root, L.RUNS)):
        if uri.endswith(f"/{L.STAGES['split'].folder}/{L.SPLIT_REPORT}"):
            with contextlib.suppress(AmnesiaError):
                if request_id in store.get_json(uri).get("request_ids", []):
                    found.append(uri.split(f"/{L.RUNS}/", 1)[1].split("/", 1)[0])
    return sorted(set(found))


# ---------------------------------------------------------------- the purge


def plan(
    settings: Settings, store: ArtifactStore, root: str, runs: list[str], requests: list[str] | None = None
) -> PurgeRecord:
    """What a purge of these runs (and the runs of these requests) would destroy; checks they are decided."""
    client = registry_client(settings)
    requests = list(requests or [])
    targets = set(runs)
    for rid in requests:
        found = runs_of_request(store, root, rid)
        if not found:
            raise PurgeError(f"request {rid}: no run worked on it (nothing stored to purge)")
        targets |= set(found)
    if not targets:
        raise PurgeError("nothing to purge: name a run (--run) or a request (--request)")
    versions, files = [], []
    for run_id in sorted(targets):
        if not store.list(L.run_root(root, run_id)):
            raise PurgeError(f"run {run_id}: nothing stored under {L.run_root(root, run_id)}")
        found = _check_decided(client, store, root, run_id)
        versions += found
        files += _personal_files(store, _folders(store, root, run_id, found), L.run_root(root, run_id))
    unique = {f.uri: f for f in files}
    return PurgeRecord(
        purge_id="",
        by="",
        at="",
        why="request" if requests else "run",
        runs=sorted(targets),
        requests=sorted(requests),
        versions=sorted({f"{mv.name}/{mv.version}" for mv in versions}),
        key_ids=[run_key_id(r) for r in sorted(targets)],
        files=[unique[u] for u in sorted(unique)],
    )


def purge(
    settings: Settings,
    store: ArtifactStore,
    root: str,
    runs: list[str],
    requests: list[str] | None = None,
    by: str | None = None,
    why: str | None = None,
) -> tuple[PurgeRecord, str]:
    """Destroy the keys, delete the files, record it; returns the record and its stored URI."""
    record = plan(settings, store, root, runs, requests)
    now = datetime.now(UTC)
    record = record.model_copy(
        update={
            "purge_id": f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            "by": by or runner_identity(),
            "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "why": why or record.why,
        }  # fmt: skip
    )
    for key_id in record.key_ids:  # first: unreadable everywhere at once, even if a delete below fails
        store.keys.destroy(key_id)
    for f in record.files:
        store.delete(f.uri)
    uri = join(root, L.PURGES, f"{record.purge_id}.json")
    ref = store.put_json(record.model_dump(mode="json"), uri)
    _record_in_mlflow(settings, record, f"{uri}#{ref.digest}")
    return record, uri


def _record_in_mlflow(settings: Settings, record: PurgeRecord, value: str) -> None:
    client = registry_client(settings)
    key = f"{PURGE_PREFIX}{record.purge_id}"
    for name_version in record.versions:
        name, version = name_version.rsplit("/", 1)
        client.set_model_version_tag(name, version, key, value)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run_id in record.runs:  # the pipeline's parent run, in whichever experiment it was
        query = f"tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}' and tags.`{Tag.ROLE}` = 'pipeline'"
        for run in client.search_runs(experiments, filter_string=query):
            client.set_tag(run.info.run_id, key, value)


Purged = dict[str, tuple[PurgedFile, PurgeRecord]]


def load_purges(store: ArtifactStore, tags: dict[str, str]) -> tuple[Purged, list[str]]:
    """The purges a model version's tags name, each record checked against its recorded sha256: the files
    they account for (uri -> file, record), and the problems found (a record missing or changed)."""
    import hashlib

    files: Purged = {}
    problems = []
    for key in sorted(k for k in tags if k.startswith(PURGE_PREFIX)):
        uri, _, digest = tags[key].partition("#")
        try:
            data = store.get_bytes(uri)
        except AmnesiaError as err:
            problems.append(f"purge record {uri}: {err}")
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"purge record {uri}: does not match its recorded sha256")
            continue
        record = PurgeRecord.model_validate_json(data)
        files |= {f.uri: (f, record) for f in record.files}
    return files, problems


# ---------------------------------------------------------------- retention


def due_for_retention(settings: Settings, store: ArtifactStore, root: str, days: int) -> list[str]:
    """Runs whose model versions were all decided more than `days` ago and are not purged yet."""
    client = registry_client(settings)
    cutoff = datetime.now(UTC) - timedelta(days=days)
    by_run: dict[str, list[Any]] = {}
    for status in (APPROVED, REJECTED):
        for mv in client.search_model_versions(f"tags.`{Tag.STATUS}` = '{status}'"):
            by_run.setdefault((mv.tags or {}).get(Tag.PIPELINE_RUN_ID, ""), []).append(mv)
    due = []
    for run_id, versions in by_run.items():
        if not run_id or not store.list(L.run_root(root, run_id)):
            continue  # another store root's run
        if any(k.startswith(PURGE_PREFIX) for mv in versions for k in (mv.tags or {})):
            continue
        decided = [datetime.strptime(mv.tags[DECIDED_AT], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                   for mv in versions if DECIDED_AT in (mv.tags or {})]  # fmt: skip
        if decided and max(decided) <= cutoff:
            with contextlib.suppress(PurgeError):  # a run with a version still pending waits
                _check_decided(client, store, root, run_id)
                due.append(run_id)
    return sorted(due)


def retention_at_end(store_root: str | None, days: int, settings: Settings | None = None) -> list[str]:
    """The exit handler's purge: days < 0 is off; a failure is logged, never the run's failure."""
    import logging

    from amnesia.core.settings import settings as default_settings

    if days < 0:
        return []
    s = settings or default_settings()
    root = store_root or f"s3://{s.bucket}"
    log = logging.getLogger("amnesia")
    try:
        done = apply_retention(s, ArtifactStore(s), root, days)
    except AmnesiaError as err:
        log.warning("retention: purge failed: %s", err)
        return []
    log.info("retention: %s", f"purge {', '.join(done)}" if done else f"nothing decided more than {days} days ago")
    return done


def apply_retention(settings: Settings, store: ArtifactStore, root: str, days: int) -> list[str]:
    """Purge every run past its retention period (the end of a pipeline run calls this); the purge ids."""
    due = due_for_retention(settings, store, root, days)
    if not due:
        return []
    record, _uri = purge(settings, store, root, due, by=RETENTION, why="retention")
    return [record.purge_id]
