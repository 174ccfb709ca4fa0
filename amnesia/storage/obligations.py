"""Standing obligations: a fulfilled erasure request binds every later version of its model.

When a person approves a version that forgot a request, the request becomes an obligation of that model:
`<root>/obligations/<model>/<request>/obligation.json` (ids, dates, figures, every later check) and
`checks.sealed`, what a later check needs of each forget item: its prompt and a keyed fingerprint of its
expected output (amnesia.science.metrics.items), sealed under the obligation's own key. Purging a run
deletes its copies of the data; the obligation keeps neither the answers nor any of their tokens, so later
candidates are still checked against the purged person. The key lives in the key store; it is destroyed
when the obligation ends (retention, or `amnesia obligations end`), and checks on that request stop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from amnesia.core.errors import AmnesiaError
from amnesia.science.metrics.aggregate import per_task
from amnesia.science.metrics.items import Fingerprint, item_fingerprint
from amnesia.science.metrics.registry import forget_score
from amnesia.science.records import UnlearningRecord
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.sealing import DataKeyError, seal
from amnesia.storage.uri import join

OBLIGATIONS = "obligations"
RECORD, CHECKS, LEDGER = "obligation.json", "checks.sealed", "ledger.json"
ACTIVE, ENDED, REOPENED = "active", "ended", "reopened"


class ObligationError(AmnesiaError):
    """An obligation is unknown, ended or unreadable; the message names the request."""


def obligation_key_id(model_name: str, request_id: str) -> str:
    return f"obligation-{model_name}-{request_id}"


class CheckItem(BaseModel):
    """One forget item as a later check needs it: the prompt (only ever stored sealed) and the fingerprint."""

    id: str
    kind: str
    prompt: str
    fingerprint: Fingerprint


class PersonScores(BaseModel):
    """A model's figures on one person's items (knowledge: exact match; regurgitation: ROUGE-L recall)."""

    items: int
    knowledge: float | None = None
    regurgitation: float | None = None
    forget_score: float | None = None  # harmonic mean of 1 - each, as the gate's forget_score
    # The per-person attacks (this run's requests; an obligation's sealed prompts get the forget score only):
    extraction: float | None = None  # share of their items that any of N sampled generations reproduces
    membership: float | None = None  # their most member-like document's percentile among the non-members
    documents: int = 0  # their MIA member documents


def person_scores(rows: list[tuple[str, float]]) -> PersonScores:
    """(kind, score) items of one person -> their knowledge, regurgitation and forget score."""
    by_task = per_task(("person", kind, s) for kind, s in rows)
    means = by_task.get("person", {})
    return PersonScores(items=len(rows), knowledge=means.get("knowledge"), regurgitation=means.get("regurgitation"),
                        forget_score=forget_score(by_task) if means else None)  # fmt: skip


class Check(BaseModel):
    """One approved version's check of the obligation."""

    version: str
    run_id: str
    at: str
    scores: PersonScores
    passed: bool
    floor: float | None
    evaluation: str  # uri#digest of the evaluation that scored it


class Ended(BaseModel):
    at: str
    by: str
    why: str


class Obligation(BaseModel):
    model_name: str
    request_id: str
    state: Literal["active", "ended", "reopened"] = ACTIVE
    documents: list[str]
    items: int
    key_id: str
    checks_sha256: str  # of the sealed checks object, as stored
    fulfilled_by: str  # the version whose approval made it
    fulfilled_run: str
    fulfilled_at: str
    retention_days: int | None = None  # checks stop (the key is destroyed) this long after fulfilment
    original: PersonScores | None = None  # the original model (before any unlearning) on this person
    at_fulfilment: PersonScores | None = None  # the version that fulfilled it
    history: list[Check] = []
    ended: Ended | None = None

    def expires(self) -> datetime | None:
        if self.retention_days is None:
            return None
        return _parse(self.fulfilled_at) + timedelta(days=self.retention_days)


class LedgerEntry(BaseModel):
    """One approved version and the obligations its evaluation checked."""

    version: str
    run_id: str
    at: str
    full: bool  # every active obligation was checked
    checked: list[str]
    not_checked: list[str] = []


class Ledger(BaseModel):
    entries: list[LedgerEntry] = []


class Selection(BaseModel):
    """Which obligations one run checks, and why."""

    checked: list[str]
    not_checked: list[str] = []
    full: bool
    why: str


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def fingerprint_key(key: bytes) -> bytes:
    """The fingerprints' own key, derived from the obligation's: the sealing key never signs answers."""
    return hmac.new(key, b"amnesia obligation fingerprints v1", hashlib.sha256).digest()


class ObligationStore:
    """One model's obligations under `<root>/obligations/<model>/`."""

    def __init__(self, store: ArtifactStore, root: str, model_name: str) -> None:
        self.store, self.root, self.model_name = store, root, model_name
        self.folder = join(root, OBLIGATIONS, model_name)

    def _uri(self, request_id: str, name: str) -> str:
        return join(self.folder, request_id, name)

    # ---------------------------------------------------------------- reading

    def get(self, request_id: str) -> Obligation | None:
        uri = self._uri(request_id, RECORD)
        return Obligation.model_validate(self.store.get_json(uri)) if self.store.exists(uri) else None

    def list(self, state: str | None = None) -> list[Obligation]:
        found = [u for u in self.store.list(self.folder) if u.endswith("/" + RECORD)]
        out = [Obligation.model_validate(self.store.get_json(u)) for u in found]
        return sorted((o for o in out if state is None or o.state == state), key=lambda o: o.request_id)

    def checks(self, ob: Obligation) -> tuple[list[CheckItem], bytes]:
        """The obligation's items and the key their fingerprints are made with; refused once it ended."""
        if ob.state == ENDED:
            raise ObligationError(f"obligation {ob.request_id}: ended {ob.ended.at if ob.ended else ''}; no checks")
        uri = self._uri(ob.request_id, CHECKS)
        try:
            data = self.store.get_bytes(uri, sha256=ob.checks_sha256)  # checked as stored, opened with its key
            key = self.store.keys.get(ob.key_id)
        except DataKeyError as err:
            raise ObligationError(f"obligation {ob.request_id}: {err}") from None
        return [CheckItem.model_validate(r) for r in json.loads(data)], fingerprint_key(key)

    def ledger(self) -> Ledger:
        uri = join(self.folder, LEDGER)
        return Ledger.model_validate(self.store.get_json(uri)) if self.store.exists(uri) else Ledger()

    # ---------------------------------------------------------------- writing

    def save(self, ob: Obligation) -> None:
        self.store.put_json(ob.model_dump(mode="json"), self._uri(ob.request_id, RECORD))

    def create(
        self,
        request_id: str,
        documents: list[str],
        records: list[UnlearningRecord],
        fulfilled_by: str,
        fulfilled_run: str,
        retention_days: int | None = None,
        original: PersonScores | None = None,
        at_fulfilment: PersonScores | None = None,
    ) -> Obligation:
        """Seal the items' prompts and fingerprints under a new key; a re-fulfilled request (after a
        rollback re-opened it) gets a new key and replaces its record, keeping its history."""
        if not records:
            raise ObligationError(f"obligation {request_id}: no forget items to check it by")
        key_id = obligation_key_id(self.model_name, request_id)
        before = self.get(request_id)
        if before is not None:
            self.store.keys.destroy(key_id)  # the old sealed checks go with their key
        key = self.store.keys.create(key_id)
        fkey = fingerprint_key(key)
        items = [CheckItem(id=r.id, kind=r.kind, prompt=r.input, fingerprint=item_fingerprint(r.kind, r.output, fkey))
                 for r in sorted(records, key=lambda r: r.id)]  # fmt: skip
        payload = json.dumps([i.model_dump() for i in items], sort_keys=True).encode()
        ref = self.store.put_bytes(seal(payload, key_id, key), self._uri(request_id, CHECKS))
        ob = Obligation(
            model_name=self.model_name, request_id=request_id, documents=sorted(documents), items=len(items),
            key_id=key_id, checks_sha256=ref.digest, fulfilled_by=fulfilled_by, fulfilled_run=fulfilled_run,
            fulfilled_at=now_stamp(), retention_days=retention_days, original=original, at_fulfilment=at_fulfilment,
            history=before.history if before else [],
        )  # fmt: skip
        self.save(ob)
        return ob

    def _close(self, request_id: str, state: str, by: str, why: str) -> Obligation:
        ob = self.get(request_id)
        if ob is None:
            raise ObligationError(f"obligation {request_id}: {self.model_name} has no such obligation")
        ob = ob.model_copy(update={"state": state, "ended": Ended(at=now_stamp(), by=by, why=why)})
        self.save(ob)
        return ob

    def end(self, request_id: str, by: str, why: str) -> Obligation:
        """Destroy the key (checks stop for good) and record who ended it, when and why."""
        ob = self.get(request_id)
        if ob is not None and ob.state == ENDED:
            return ob
        if not why.strip():
            raise ObligationError(f"obligation {request_id}: ending it needs a reason (--reason)")
        if ob is not None:
            self.store.keys.destroy(ob.key_id)
        return self._close(request_id, ENDED, by, why)

    def reopen(self, request_id: str, by: str, why: str) -> Obligation:
        """A rollback left the versions that fulfilled it: the request is pending again, not an obligation."""
        return self._close(request_id, REOPENED, by, why)

    def expire(self, by: str = "retention-policy") -> list[str]:
        """End the obligations past their retention period; the ids ended."""
        now = datetime.now(UTC)
        done = []
        for ob in self.list(ACTIVE):
            when = ob.expires()
            if when is not None and now >= when:
                self.end(ob.request_id, by, f"retention: {ob.retention_days} days after fulfilment")
                done.append(ob.request_id)
        return done

    def record(self, entry: LedgerEntry, checks: dict[str, Check]) -> None:
        """An approved version's checks: each obligation's history, and the ledger the sampling reads."""
        for rid, check in sorted(checks.items()):
            ob = self.get(rid)
            if ob is not None:
                self.save(ob.model_copy(update={"history": [*ob.history, check]}))
        ledger = self.ledger()
        ledger.entries.append(entry)
        self.store.put_json(ledger.model_dump(mode="json"), join(self.folder, LEDGER))

    # ---------------------------------------------------------------- which to check

    def select(self, sample: int | None, full_every: int, seed: str) -> Selection:
        """Every active obligation when there are at most `sample`, or on every `full_every`-th approved
        version; otherwise the `sample` least recently checked (ties in a seeded order), whole requests."""
        active = [o.request_id for o in self.list(ACTIVE)]
        if sample is None or len(active) <= sample:
            return Selection(checked=active, full=True, why=f"all {len(active)} active obligations")
        entries = self.ledger().entries
        since_full = next((i for i, e in enumerate(reversed(entries)) if e.full), len(entries))
        if since_full + 1 >= full_every:
            return Selection(checked=active, full=True,
                             why=f"all {len(active)}: a full check every {full_every} approved versions")  # fmt: skip
        last = {rid: i for i, e in enumerate(entries) for rid in e.checked}
        order = sorted(active, key=lambda r: (last.get(r, -1), hashlib.sha256(f"{seed}:{r}".encode()).hexdigest()))
        chosen = sorted(order[:sample])
        return Selection(
            checked=chosen, not_checked=sorted(order[sample:]), full=False,
            why=f"{sample} of {len(active)}, the least recently checked first (whole requests); all of them "
                f"within {full_every - since_full - 1} more approved versions",
        )  # fmt: skip
