"""The unlearn stage's result: the candidate model folder, what trained, how it stopped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from amnesia.results.search import SearchResult
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join


class UnlearnResult(BaseModel):
    uri: str  # the candidate model folder
    digest: str
    report_uri: str  # curves and the run summary (no record text)
    method: str
    layers: list[int]
    target: str
    trainable_params: int
    total_params: int
    steps: int
    stopped: str
    best_step: int
    resumed_from: int | None
    before: dict[str, float]  # the first held-out evaluation (the base model)
    after: dict[str, float]  # the same evaluation of the stored weights
    config_hash: str
    search: SearchResult | None = None  # the settings search that chose these settings, when one ran
    phases: list[dict[str, Any]] = []  # how each phase ended, for a method with phases (UNDO)

    @classmethod
    def load(cls, store: ArtifactStore, uri: str) -> UnlearnResult:
        """A stored candidate, read back from its model folder (the summary travels with the weights)."""
        summary = store.get_json(join(uri, L.UNLEARN_SUMMARY))
        report_uri = join(uri.rsplit("/", 1)[0], "report")
        found = {k: summary[k] for k in cls.model_fields if k in summary}
        return cls.model_validate(found | {"uri": uri, "digest": store.ref(uri).digest, "report_uri": report_uri})
