"""The run's plan, made by preflight at run time: which model it starts from, the original model its floors are
relative to, and which standing obligations (earlier fulfilled requests) its candidate is checked against."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Mode = Literal["original", "incremental", "cumulative"]


class ObligationRef(BaseModel):
    request_id: str
    documents: list[str]
    items: int
    fulfilled_by: str  # the version whose approval made it an obligation


class RunPlan(BaseModel):
    mode: Mode
    model_name: str
    original_uri: str  # the model before any unlearning: relative floors are against it
    original_digest: str | None
    start_uri: str  # what this run unlearns from: the original, or the champion (incremental)
    start_digest: str | None
    start_version: str | None = None  # the champion version it starts from (incremental)
    champion: str | None = None  # the champion when planned: approving after it changed is refused (stale base)
    obligations: list[ObligationRef] = []  # checked by this run's candidate
    earlier: list[str] = []  # every active obligation (excluded from retain; in cumulative mode, forgotten again)
    earlier_documents: list[str] = []  # their documents: never in a retain set again
    not_checked: list[str] = []  # sampled out this time
    ended: list[str] = []  # obligations whose key was destroyed: their checks stopped
    sampling: str = "no obligations yet"
    full_check: bool = True
    obligation_retention_days: int | None = None  # for the obligations this run's approval makes

    @staticmethod
    def none(model_name: str, uri: str) -> RunPlan:
        """No registry to read (a run without MLflow, or a stage run by hand): start from the model given."""
        return RunPlan(mode="original", model_name=model_name, original_uri=uri, original_digest=None, start_uri=uri,
                       start_digest=None)  # fmt: skip
