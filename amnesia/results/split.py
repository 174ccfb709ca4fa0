"""The split's result: where each set lies, its digest and counts, the requests it serves."""

from __future__ import annotations

import json

from pydantic import BaseModel

from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join

SETS, MIA_SETS = L.SPLIT_SETS, L.MIA_SETS


class SetInfo(BaseModel):
    uri: str
    sha256: str
    records: int
    documents: int


class SplitResult(BaseModel):
    uri: str  # the folder holding every set, with a manifest
    digest: str  # the folder's manifest digest
    sets: dict[str, SetInfo]
    request_digest: str | None
    request_ids: list[str]
    warnings: dict[str, int]
    deadlines: dict[str, list[str]] = {}  # overdue / due_soon: request ids (Art. 12(3))

    @classmethod
    def load(cls, store: ArtifactStore, uri: str) -> SplitResult:
        return load_split_result(store, uri)


def load_split_result(store: ArtifactStore, uri: str) -> SplitResult:
    """Rebuild a SplitResult from a stored split folder (verified manifest + report)."""
    manifest = store.read_manifest(uri)
    report = json.loads(store.get_bytes(join(uri, L.SPLIT_REPORT)))
    files = {e.path: e for e in manifest.files}
    sets = {}
    for name in SETS + MIA_SETS:
        counts = report["sets"][name]
        docs = counts["documents"]
        sets[name] = SetInfo(
            uri=join(uri, f"{name}.parquet"),
            sha256=files[f"{name}.parquet"].sha256,
            records=counts.get("records", docs),
            documents=docs,
        )
    return SplitResult(
        uri=uri,
        digest=manifest.digest,
        sets=sets,
        request_digest=report["request_digest"],
        request_ids=report["request_ids"],
        warnings=report["warnings"],
        deadlines=report.get("deadlines", {}),
    )
