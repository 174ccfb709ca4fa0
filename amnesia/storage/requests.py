"""Erasure requests and the request queue.

A request names a data subject (and optionally records or documents) under a GDPR Art. 17(1)
ground. Pending requests live under `<root>/requests/pending/<request_id>.json`; a run works on a
snapshot of them, whose digest is the run's request digest; they move to `fulfilled/` only when a
model that forgot them is approved.

Deadlines (GDPR Art. 12(3)): a request is due one month after receipt; the controller may extend that by
up to two further months, telling the person why. An extension lives beside the request
(`requests/extensions/<id>.json`), so the request itself, and every snapshot digest, stays as received.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amnesia.core.config import read_text
from amnesia.core.errors import AmnesiaError, ConfigError
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join


class RequestError(AmnesiaError):
    """A request file or the queue is malformed; the message names the file, request or field."""


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    subject: str = Field(min_length=1, description="The data subject's name or identifier.")
    received_at: datetime
    ground: Literal["a", "b", "c", "d", "e", "f"] = Field(description="GDPR Art. 17(1) ground.")
    record_ids: list[str] = []
    document_ids: list[str] = []


def _parse(rows: list[object], source: str, where: str) -> list[ErasureRequest]:
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append(ErasureRequest.model_validate(row))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(row)"
            rid = row.get("request_id") if isinstance(row, dict) else None
            who = f" (request {rid})" if isinstance(rid, str) and len(rid) < 130 else ""
            msg = "missing" if first["type"] == "missing" else first["msg"]
            raise RequestError(f"{source}: {where} {i}{who}: field '{field}': {msg}") from None
    return out


def load_requests(path: Path) -> list[ErasureRequest]:
    """Requests from a JSONL file (one per line) or a YAML file (a list)."""
    try:
        text = read_text(path, "requests file")
    except ConfigError as err:
        raise RequestError(str(err)) from None
    if path.suffix in (".yaml", ".yml"):
        try:
            rows = yaml.safe_load(text) or []
        except yaml.YAMLError:
            raise RequestError(f"{path}: not valid YAML") from None
        if not isinstance(rows, list):
            raise RequestError(f"{path}: expected a YAML list of requests")
        return _check_unique(_parse(rows, str(path), "item"), str(path))
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RequestError(f"{path}: line {lineno}: not valid JSON ({err.msg})") from None
    return _check_unique(_parse(rows, str(path), "line"), str(path))


def load_requests_uri(store: ArtifactStore, uri: str) -> list[ErasureRequest]:
    """Requests from a local path or an s3:// file."""
    if not uri.startswith("s3://"):
        return load_requests(Path(uri))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_requests(store.get_file(uri, Path(tmp) / Path(uri).name))


def _check_unique(requests: list[ErasureRequest], source: str) -> list[ErasureRequest]:
    seen: set[str] = set()
    for r in requests:
        if r.request_id in seen:
            raise RequestError(f"{source}: request {r.request_id} appears twice")
        seen.add(r.request_id)
    return requests


def canonical_jsonl(requests: list[ErasureRequest]) -> bytes:
    """Sorted by request id, keys sorted: the same requests always give the same bytes and digest."""
    rows = sorted(requests, key=lambda r: r.request_id)
    return "".join(json.dumps(r.model_dump(mode="json"), sort_keys=True) + "\n" for r in rows).encode()


def request_digest(requests: list[ErasureRequest]) -> str:
    return hashlib.sha256(canonical_jsonl(requests)).hexdigest()


DUE_MONTHS, MAX_EXTENSION_MONTHS, DUE_SOON_DAYS = 1, 2, 7


def add_months(when: datetime, months: int) -> datetime:
    """Calendar months, the day clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    total = when.month - 1 + months
    year, month = when.year + total // 12, total % 12 + 1
    return when.replace(year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1]))


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    months: int = Field(ge=1, le=MAX_EXTENSION_MONTHS)
    reason: str = Field(min_length=1, description="What the person was told (Art. 12(3)); kept in the store only.")
    by: str
    at: str


@dataclass(frozen=True)
class Due:
    request: ErasureRequest
    state: str
    due: datetime
    extension: Extension | None

    def days_left(self, now: datetime) -> int:
        """Whole days to the due date; negative: whole days past it (0 on the day it falls due)."""
        seconds = (self.due - now).total_seconds()
        return math.floor(seconds / 86400) if seconds >= 0 else -math.floor(-seconds / 86400)

    def overdue(self, now: datetime) -> bool:
        return self.state == "pending" and now > self.due

    def row(self, now: datetime) -> dict[str, object]:
        """What `requests list --json` prints: ids and dates, no subject."""
        r = self.request
        return {"request_id": r.request_id, "state": self.state, "ground": r.ground,
                "received_at": r.received_at.isoformat(), "due": self.due.isoformat(),
                "days_left": self.days_left(now), "overdue": self.overdue(now),
                "extended_months": self.extension.months if self.extension else 0}  # fmt: skip


def due_date(request: ErasureRequest, extension: Extension | None = None) -> datetime:
    received = request.received_at if request.received_at.tzinfo else request.received_at.replace(tzinfo=UTC)
    return add_months(received, DUE_MONTHS + (extension.months if extension else 0))


class Snapshot(BaseModel):
    uri: str
    digest: str
    request_ids: list[str]


class RequestQueue:
    """Pending and fulfilled requests under `<root>/requests/`."""

    def __init__(self, store: ArtifactStore, root: str) -> None:
        self.store, self.root = store, root

    def _uri(self, state: str, request_id: str) -> str:
        return join(self.root, "requests", state, f"{request_id}.json")

    def submit(self, requests: list[ErasureRequest], skip_known: bool = False) -> list[str]:
        """Add requests to the pending queue. A request id already pending or fulfilled is refused, or
        with skip_known left as it is (so a re-sent batch does not fail). Returns the ids added."""
        new = []
        for r in requests:
            known = next((s for s in ("pending", "fulfilled") if self.store.exists(self._uri(s, r.request_id))), None)
            if known and not skip_known:
                raise RequestError(f"request {r.request_id} is already {known}")
            if not known:
                new.append(r)
        for r in new:
            self.store.put_json(r.model_dump(mode="json"), self._uri("pending", r.request_id))
        return [r.request_id for r in new]

    def list(self, state: Literal["pending", "fulfilled"] = "pending") -> list[ErasureRequest]:
        out = []
        for uri in self.store.list(join(self.root, "requests", state)):
            if uri.endswith(".json"):
                out.append(_parse([self.store.get_json(uri)], uri, "object")[0])
        return sorted(out, key=lambda r: r.request_id)

    def find(self, request_id: str) -> tuple[str, ErasureRequest] | None:
        """A request and its state (pending or fulfilled), or None when the queue never had it."""
        for state in ("pending", "fulfilled"):
            uri = self._uri(state, request_id)
            if self.store.exists(uri):
                return state, _parse([self.store.get_json(uri)], uri, "object")[0]
        return None

    def extension(self, request_id: str) -> Extension | None:
        uri = self._uri("extensions", request_id)
        return Extension.model_validate(self.store.get_json(uri)) if self.store.exists(uri) else None

    def extend(self, request_id: str, reason: str, by: str, months: int = MAX_EXTENSION_MONTHS) -> Due:
        """Move a pending request's due date by `months` (at most two in all, Art. 12(3)), with the reason."""
        if not self.store.exists(self._uri("pending", request_id)):
            raise RequestError(f"request {request_id} is not pending; only a pending request's deadline can move")
        if not reason.strip():
            raise RequestError(f"request {request_id}: an extension needs the reason given to the person (--reason)")
        before = self.extension(request_id)
        total = months + (before.months if before else 0)
        if months < 1 or total > MAX_EXTENSION_MONTHS:
            raise RequestError(
                f"request {request_id}: extending by {months} month(s) makes {total}; "
                f"Art. 12(3) allows at most {MAX_EXTENSION_MONTHS} further months"
            )
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reasons = f"{before.reason}\n{at}: {reason}" if before else reason
        ext = Extension(request_id=request_id, months=total, reason=reasons, by=by, at=at)
        self.store.put_json(ext.model_dump(mode="json"), self._uri("extensions", request_id))
        return self.due(self.list("pending"), "pending", [request_id])[0]

    def due(self, requests: list[ErasureRequest], state: str = "pending", only: list[str] | None = None) -> list[Due]:
        """Each request with its due date, soonest (or most overdue) first."""
        out = []
        for r in requests:
            if only is None or r.request_id in only:
                ext = self.extension(r.request_id)
                out.append(Due(r, state, due_date(r, ext), ext))
        return sorted(out, key=lambda d: (d.due, d.request.request_id))

    def by_due_date(self, state: Literal["pending", "fulfilled"] = "pending") -> list[Due]:
        return self.due(self.list(state), state)

    def snapshot(self, dest: str) -> Snapshot:
        """Freeze the pending requests for one run: one canonical JSONL file and its digest."""
        pending = self.list("pending")
        ref = self.store.put_bytes(canonical_jsonl(pending), dest, "application/jsonl")
        return Snapshot(uri=ref.uri, digest=ref.digest, request_ids=[r.request_id for r in pending])

    def reopen(self, request_id: str, why: str, by: str) -> None:
        """Back from fulfilled to pending (a rollback left the only versions that had forgotten it); the note
        beside it (`requests/reopened/<id>.json`) says when, by whom and why."""
        src = self._uri("fulfilled", request_id)
        if not self.store.exists(src):
            raise RequestError(f"request {request_id} is not fulfilled")
        self.store.put_bytes(self.store.get_bytes(src), self._uri("pending", request_id), "application/json")
        self.store.delete(src)
        note = {"request_id": request_id, "why": why, "by": by, "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.store.put_json(note, self._uri("reopened", request_id))

    def reopened(self, request_id: str) -> dict[str, str] | None:
        uri = self._uri("reopened", request_id)
        return self.store.get_json(uri) if self.store.exists(uri) else None

    def fulfil(self, request_ids: list[str]) -> None:
        """Move requests from pending to fulfilled (after a person approved a model that forgot them)."""
        for rid in request_ids:
            src = self._uri("pending", rid)
            if not self.store.exists(src):
                raise RequestError(f"request {rid} is not pending")
            self.store.put_bytes(self.store.get_bytes(src), self._uri("fulfilled", rid), "application/json")
            self.store.delete(src)
