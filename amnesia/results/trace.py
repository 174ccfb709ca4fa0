"""The trace's result: the chosen layers, the rule and its confidence, the stored heatmaps."""

from __future__ import annotations

from pydantic import BaseModel

from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join


class TraceResult(BaseModel):
    uri: str
    digest: str
    layers: list[int]
    rule: str
    counts: dict[str, int]  # facts: total, traced, and each reason for skipping
    heatmaps: list[str]  # aggregate heatmaps (no record text): the ones that may go to MLflow
    noise_std: float
    method: str = "exact"
    group: str | None = None  # the token group the rule read
    effect: list[float] = []  # per layer: the MLP effect in that group (what the rule looked at)
    confidence: float | None = None  # the chosen window's effect over its bootstrap spread
    warning: str | None = None  # the choice is noise (a fallback was used): said in the summary, report, MLflow
    warning_code: str | None = None  # the same as a tag-safe token

    @classmethod
    def load(cls, store: ArtifactStore, uri: str) -> TraceResult:
        """A stored trace, read back from its folder (the CLI's evaluate/gate commands take one)."""
        agg = store.get_json(join(uri, L.TRACE_AGGREGATE))
        heatmaps = [u for u in store.list(join(uri, L.HEATMAPS)) if "/aggregate_" in u]
        return cls.model_validate(
            {k: agg[k] for k in cls.model_fields if k in agg}
            | {"uri": uri, "digest": store.ref(uri).digest, "heatmaps": heatmaps}
        )
