"""Lineage in MLflow: the only module that writes to it.

A pipeline run is one parent MLflow run (found by its pipeline run id, so any process can join
it) with one nested run per stage. Every value passes a guard first: forget-set text is personal
data, so params, tags, metrics and dataset entries may hold ids, counts, URIs and hashes only.
The tags are listed here, in `Tag`, so the audit reads exactly what the stages write.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import subprocess
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from amnesia import __version__
from amnesia.core.errors import AmnesiaError, LineageError
from amnesia.core.settings import Settings
from amnesia.core.settings import settings as default_settings
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.layout import TRACKED_TASKS, VERDICT, run_root, stage_uri
from amnesia.storage.uri import join


class Tag(StrEnum):
    """Every lineage tag the project writes."""

    PIPELINE_RUN_ID = "amnesia.pipeline_run_id"
    ROLE = "amnesia.role"  # "pipeline", "stage", or "part" (a search trial, below its stage run)
    STAGE = "amnesia.stage"
    CODE_VERSION = "amnesia.code_version"
    IMAGE = "amnesia.image"
    CONFIG_HASH = "amnesia.config_hash"
    STATUS = "amnesia.status"
    ERROR = "amnesia.error"  # the exception class only: messages can quote data
    STOPPED_AT = "amnesia.stopped_at"
    REQUEST_DIGEST = "amnesia.request_digest"  # sha256 of the canonical request snapshot
    REQUEST_IDS_DIGEST = "amnesia.request_ids_digest"  # sha256 of the sorted request ids
    REQUEST_COUNT = "amnesia.request_count"
    SPLIT_URI = "amnesia.split_uri"
    SPLIT_DIGEST = "amnesia.split_digest"
    BASE_MODEL_URI = "amnesia.base_model_uri"
    BASE_MODEL_DIGEST = "amnesia.base_model_digest"
    TRACE_URI = "amnesia.trace_uri"
    TRACE_DIGEST = "amnesia.trace_digest"
    LAYERS = "amnesia.layers"  # comma list of the layers chosen for unlearning
    LAYER_RULE = "amnesia.layer_rule"  # "explicit", "fallback" or "max-mlp-window-k<k>@<token-group>"
    LAYER_GROUP = "amnesia.layer_group"  # the token group the rule read, hyphenated ("none": explicit layers)
    TRACE_WARNING = "amnesia.trace_warning"  # only when the choice is noise (a fallback): no-signal,group=…,…
    METHOD = "amnesia.method"  # the unlearning method's registered name
    MODEL_URI = "amnesia.model_uri"  # the unlearned (candidate) model folder
    MODEL_DIGEST = "amnesia.model_digest"
    EVALUATION_URI = "amnesia.evaluation_uri"  # the stored per-item results
    EVALUATION_DIGEST = "amnesia.evaluation_digest"
    EVALUATION_CACHED = "amnesia.evaluation_cached"  # "true" when a stored result was reused
    GATE_PASSED = "amnesia.gate_passed"  # "true" / "false"
    GATE_REASONS = "amnesia.gate_reasons"  # the failed checks, as name<floor codes (text stays in the report)
    REPORT_URI = "amnesia.report_uri"
    RESUMED_FROM = "amnesia.resumed_from"  # checkpoint step a retried unlearn stage resumed from
    START_MODE = "amnesia.start_mode"  # original / incremental / cumulative (amnesia.runtime.plan)
    START_MODEL_URI = "amnesia.start_model_uri"  # what the run unlearned from
    START_MODEL_DIGEST = "amnesia.start_model_digest"
    START_VERSION = "amnesia.start_version"  # the champion version it started from ("none": the original)
    CHAMPION_AT_PLAN = "amnesia.champion_at_plan"  # the champion when the run was planned ("none")
    ORIGINAL_MODEL_URI = "amnesia.original_model_uri"  # the model before any unlearning
    ORIGINAL_MODEL_DIGEST = "amnesia.original_model_digest"
    PLAN_URI = "amnesia.plan_uri"
    OBLIGATIONS_CHECKED = "amnesia.obligations_checked"  # how many earlier requests the candidate was checked on


# Ids, numbers, URIs, hashes, comma lists: no spaces, so no sentences.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+=,#%\-\[\]]*$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,250}$")
_MAX_VALUE = 500
_MIN_PROTECTED = 5  # shorter strings ("yes", "1990") would match everywhere
_TEXT_SUFFIXES = {".txt", ".json", ".jsonl", ".md", ".html", ".csv", ".yaml", ".yml", ".log", ".svg"}


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@cache
def code_version() -> str:
    """Package version, plus the git commit when run from a checkout (or AMNESIA_CODE_VERSION)."""
    if env := os.environ.get("AMNESIA_CODE_VERSION"):
        return env
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if sha:
            return f"{__version__}+g{sha}"
    return __version__


class Guard:
    """Decides whether a value may be written to MLflow."""

    def __init__(self, protected: Iterable[str] = ()) -> None:
        self._protected: set[str] = set()
        self.protect(protected)

    def protect(self, texts: Iterable[str]) -> None:
        """Register record text (forget inputs/outputs, subject names) that must never be logged."""
        self._protected.update(n for n in map(_norm, texts) if len(n) >= _MIN_PROTECTED)

    def leaks(self, text: str) -> bool:
        n = _norm(text)
        return any(p in n for p in self._protected)

    def check(self, kind: str, key: str, value: Any) -> str:
        if not _SAFE_KEY.match(key):
            raise LineageError(f"refusing to log {kind}: key {key[:40]!r}… is not an identifier")
        if isinstance(value, bool | int | float):
            return str(value)
        text = str(value)
        # Never echo the value: it may be the very data we refuse to log.
        if len(text) > _MAX_VALUE or not _SAFE_VALUE.match(text):
            raise LineageError(
                f"refusing to log {kind} {key!r}: its value looks like free text ({len(text)} chars); "
                "log ids, counts, URIs or hashes"
            )
        if self.leaks(text):
            raise LineageError(f"refusing to log {kind} {key!r}: it contains protected record text")
        return text

    def check_file(self, path: Path) -> None:
        if path.suffix.lower() in _TEXT_SUFFIXES and self.leaks(path.read_text(errors="replace")):
            raise LineageError(f"refusing to log artifact {path.name}: it contains protected record text")


class StageRun:
    """A nested MLflow run for one stage."""

    def __init__(self, client: Any, run_id: str, guard: Guard) -> None:
        self.client, self.run_id, self.guard = client, run_id, guard

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, self.guard.check("param", k, v)) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            self.guard.check("metric", k, 0)
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise LineageError(f"refusing to log metric {k!r}: not a number")
            items.append(Metric(k, float(v), now, step or 0))
        self.client.log_batch(self.run_id, metrics=items)

    def log_series(self, rows: Iterable[Mapping[str, float]], keys: Iterable[str], prefix: str = "") -> None:
        """Curves: each row holds a 'step' and values; the given keys are logged at that step, in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keys = list(keys)
        for k in keys:
            self.guard.check("metric", prefix + k, 0)
        items = [Metric(prefix + k, float(row[k]), now, int(row["step"])) for row in rows for k in keys if k in row]
        for start in range(0, len(items), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, self.guard.check("tag", k, v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            self.guard.check_file(f)
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, digest: str, source: str, context: str, counts: Mapping[str, int]) -> None:
        """Record a dataset by name, digest and S3 source; the profile holds counts, never content."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        for key, value in {"name": name, "digest": digest, "source": source, "context": context}.items():
            self.guard.check("dataset", key, value)
        profile = json.dumps({k: int(v) for k, v in counts.items()}, sort_keys=True)
        dataset = Dataset(
            name=name,
            digest=digest[:36],
            source_type="s3" if source.startswith("s3://") else "local",
            source=json.dumps({"uri": source, "sha256": digest}),
            profile=profile,
        )
        self.client.log_inputs(
            self.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
        )


class LiveSeries:
    """Curves logged while a loop runs: rows are buffered and sent every `every_s` seconds (and on flush),
    so MLflow shows a long run's progress without one request per step. Every numeric key of a row is
    logged at its 'step': whatever a method reports, no fixed list of names."""

    def __init__(self, run: StageRun, every_s: float = 10.0) -> None:
        self.run, self.every_s = run, every_s
        self.pending: dict[str, list[dict[str, float]]] = {}  # prefix -> rows
        self.last = time.monotonic()

    def add(self, row: Mapping[str, float], prefix: str = "") -> None:
        self.pending.setdefault(prefix, []).append(dict(row))
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        for prefix, rows in self.pending.items():
            keys = sorted({k for row in rows for k, v in row.items() if k != "step" and isinstance(v, int | float)})
            self.run.log_series(rows, keys, prefix)
        self.pending, self.last = {}, time.monotonic()


class Lineage:
    """Opens (or joins) a pipeline run's parent MLflow run and its stages' nested runs."""

    def __init__(
        self,
        pipeline_run_id: str,
        experiment: str | None = None,
        settings: Settings | None = None,
        protected: Iterable[str] = (),
    ) -> None:
        self.settings = settings or default_settings()
        if not self.settings.mlflow_tracking_uri:
            raise LineageError("MLFLOW_TRACKING_URI is not set (start the local stack: `amnesia stack up`)")
        self.pipeline_run_id = Guard().check("tag", Tag.PIPELINE_RUN_ID, pipeline_run_id)
        self.experiment = experiment or self.settings.experiment
        self.client = mlflow_client(self.settings)
        self.guard = Guard(protected)
        self._experiment_id: str | None = None
        self._parent_id: str | None = None

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail in one line, before a stage writes anything, when the tracking server does not answer
        (MLflow's own client would retry for minutes and then end in a traceback)."""
        uri = self.settings.mlflow_tracking_uri or ""
        if not uri.startswith(("http://", "https://")):
            return  # a file or database store: nothing to reach
        import requests

        try:
            answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as err:
            raise LineageError(
                f"MLflow at {uri}: not reachable ({type(err).__name__}); start the local stack (`amnesia stack up`) "
                "or fix MLFLOW_TRACKING_URI"
            ) from None
        if answer.status_code >= 500:
            raise LineageError(f"MLflow at {uri}: answered HTTP {answer.status_code} to its health check")

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment)
                except Exception:  # another process created it first
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return self._experiment_id  # type: ignore[return-value]

    def _base_tags(self) -> dict[str, str]:
        return {
            Tag.PIPELINE_RUN_ID: self.pipeline_run_id,
            Tag.CODE_VERSION: code_version(),
            Tag.IMAGE: os.environ.get("AMNESIA_IMAGE_REF", f"{self.settings.image}:{__version__}"),
            "mlflow.user": runner_identity(),  # MLflow's "User" column: who ran it, not "unknown"
        }

    def parent_run_id(self) -> str:
        """The pipeline's parent run: found by its pipeline run id, created if none exists yet."""
        if self._parent_id is None:
            query = f"tags.`{Tag.PIPELINE_RUN_ID}` = '{self.pipeline_run_id}' and tags.`{Tag.ROLE}` = 'pipeline'"
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"]
            )
            if runs:
                self._parent_id = runs[0].info.run_id
            else:
                tags = self._base_tags() | {Tag.ROLE: "pipeline", "mlflow.runName": self.pipeline_run_id}
                self._parent_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        return self._parent_id

    @contextlib.contextmanager
    def stage(
        self, name: str, params: Mapping[str, Any] | None = None, parent: StageRun | None = None
    ) -> Iterator[StageRun]:
        """A nested run for one stage (or, with parent, for one part of a stage: a search's trial); FAILED (with
        the error's class, not its text) if the body raises."""
        above = parent.run_id if parent is not None else self.parent_run_id()
        tags = self._base_tags() | {
            Tag.ROLE: "stage" if parent is None else "part",
            Tag.STAGE: self.guard.check("tag", Tag.STAGE, name),
            "mlflow.parentRunId": above,
            "mlflow.runName": name,
        }
        self._end_killed_attempts(name, above)
        run = StageRun(self.client, self.client.create_run(self.experiment_id, tags=tags).info.run_id, self.guard)
        try:
            if params:
                run.log_params(params)
            yield run
        except BaseException as err:
            with contextlib.suppress(Exception):
                run.set_tags({Tag.ERROR: err.__class__.__name__})
                self.client.set_terminated(run.run_id, "FAILED")
            raise
        self.client.set_terminated(run.run_id, "FINISHED")

    def _end_killed_attempts(self, name: str, parent: str) -> None:
        """An earlier attempt of this stage still RUNNING was killed (kill -9, an evicted pod: nothing could
        close it); KFP starts the next attempt only after it, so mark it KILLED before this one begins."""
        query = (
            f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{Tag.STAGE}` = '{name}'"
            " and attributes.status = 'RUNNING'"
        )
        for stale in self.client.search_runs([self.experiment_id], query):
            with contextlib.suppress(Exception):
                self.client.set_tag(stale.info.run_id, Tag.ERROR, "KilledAttempt")
                self.client.set_terminated(stale.info.run_id, "KILLED")

    def end_parent(self, ok: bool) -> None:
        """End the parent run this process opened (a stage command run on its own), if it opened one."""
        if self._parent_id is not None:
            with contextlib.suppress(Exception):  # closing is best effort: the command's own error matters
                self.client.set_terminated(self._parent_id, "FINISHED" if ok else "FAILED")

    def close(self, status: str, **tags: Any) -> None:
        """End the parent run (the exit handler's job): status and final tags."""
        parent = StageRun(self.client, self.parent_run_id(), self.guard)
        parent.set_tags({Tag.STATUS: status, **tags})
        self.client.set_terminated(parent.run_id, "FINISHED" if status == "succeeded" else "FAILED")


PIPELINE_STAGES = TRACKED_TASKS  # the stage table's tasks with an MLflow stage run, in DAG order
# What the parent run shows at a glance: the gate's headline figures, candidate and base (science.metrics.registry:
# the scores and every registered metric's headline figures) and the settings that made the candidate.
HEADLINE_PARAMS = {"unlearn": ("method", "target", "layers", "lr", "epochs", "model.dtype", "model.device")}


def runner_identity() -> str:
    """Who runs the pipeline: the MLflow user it authenticates as (the one that may not approve what it
    made), else AMNESIA_RUNNER, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("AMNESIA_RUNNER") or getpass.getuser()


def _headline(stages: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """The parent run's params and metrics, taken from its stage runs (newest attempt of each)."""
    params: dict[str, Any] = {"base_model_uri": ""}
    for stage, keys in HEADLINE_PARAMS.items():
        got = stages[stage].data.params if stage in stages else {}
        params |= {k: got[k] for k in keys if k in got}
    if "unlearn" in stages:
        params["base_model_uri"] = stages["unlearn"].data.tags.get(Tag.BASE_MODEL_URI, "")
    from amnesia.science.metrics.registry import headline

    gate = stages["gate"].data.metrics if "gate" in stages else {}
    metrics = {k: gate[k] for k in headline() if k in gate}
    metrics |= {f"base.{k}": gate[f"base.{k}"] for k in headline() if f"base.{k}" in gate}
    return {k: v for k, v in params.items() if v != ""}, metrics


def finish_run(pipeline_run_id: str, store_root: str | None, state: str, settings: Settings | None = None) -> str:
    """The exit handler's work: close the parent run with the final status, the gate's verdict (read from
    the stored report) and the stage the run stopped at (a failed stage run, else the first one missing)."""
    s = settings or default_settings()
    store, root = ArtifactStore(s), run_root(store_root or f"s3://{s.bucket}", pipeline_run_id)
    lineage = Lineage(pipeline_run_id, settings=s)
    parent = lineage.parent_run_id()
    runs = lineage.client.search_runs([lineage.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    # A retried stage has several runs: the newest one says how it ended.
    newest = {r.data.tags.get(Tag.STAGE): r for r in sorted(runs, key=lambda r: r.info.start_time)}
    seen = {stage: run.info.status for stage, run in newest.items()}
    errors = recorded_errors(store, root)  # a stage's one-line failure (preflight has no stage run)
    failed_stage = next((n for n in ("preflight", *PIPELINE_STAGES) if seen.get(n) == "FAILED" or n in errors), None)
    missing = next((n for n in PIPELINE_STAGES if n not in seen), None)
    ok = state.upper() in ("SUCCEEDED", "SUCCESS", "COMPLETE", "COMPLETED")
    tags: dict[str, Any] = {Tag.STOPPED_AT: "end" if ok and not failed_stage else failed_stage or missing or "register"}
    verdict_uri = stage_uri(root, "gate", VERDICT)
    if store.exists(verdict_uri):
        verdict = store.get_json(verdict_uri)
        tags[Tag.GATE_PASSED] = str(verdict["passed"]).lower()
        tags[Tag.GATE_REASONS] = ",".join(verdict["codes"]) or "none"
    params, metrics = _headline(newest)
    headline = StageRun(lineage.client, parent, lineage.guard)
    if params:
        headline.log_params(params)
    if metrics:
        headline.log_metrics(metrics)
    lineage.close("succeeded" if ok else "failed", **tags)
    return "succeeded" if ok else "failed"


def mlflow_client(settings: Settings) -> Any:
    """An MlflowClient for this identity. MLflow reads credentials from the environment only, so they are put
    there unless the process already names an MLflow user (its own identity wins)."""
    from mlflow import MlflowClient

    if (
        settings.mlflow_tracking_username
        and settings.mlflow_tracking_password
        and not os.environ.get("MLFLOW_TRACKING_USERNAME")
    ):
        os.environ["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_tracking_username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.mlflow_tracking_password.get_secret_value()
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def recorded_errors(store: ArtifactStore, root: str) -> dict[str, str]:
    """Stage → its recorded one-line error, for the run summary."""
    out = {}
    with contextlib.suppress(AmnesiaError):  # no errors folder: nothing failed that way
        for uri in store.list(join(root, "errors")):
            out[uri.rsplit("/", 1)[-1].removesuffix(".txt")] = store.get_bytes(uri).decode().strip()
    return out
