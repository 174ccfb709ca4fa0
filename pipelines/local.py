"""Run the pipeline in kfp.local (SubprocessRunner, the current Python environment) against the stack
the settings point at, and read back what it left: verdict, registration, report."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from kfp import local
from pydantic import SecretStr

from amnesia.core.settings import Settings
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.requests import RequestQueue, request_digest
from pipelines.console import task_console
from pipelines.unlearning import build


def queue_digest(store: ArtifactStore, root: str) -> str:
    """The digest of the pending requests now: the run is submitted for exactly these."""
    pending = RequestQueue(store, root).list("pending")
    return request_digest(pending) if pending else ""


def run_local(
    cfg: PipelineConfig, settings: Settings, run_id: str, workdir: Path, logs: Path | None = None, verbose: bool = False
) -> dict[str, Any]:
    """Run the DAG; raises when a task fails (after the exit handler closed the lineage). With `logs`, the
    terminal shows a line per stage and the stages' progress, and each task's full output goes to
    `logs/<task>.log` (`verbose`: everything on the terminal as well)."""
    store = ArtifactStore(settings)
    root = cfg.store_root(settings.bucket)
    digest = queue_digest(store, root) if cfg.split.requests == "queue" else ""
    env = settings_env(settings) | {"AMNESIA_EXPERIMENT": cfg.experiment}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the task subprocesses inherit the stack's address and keys
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir), raise_on_error=True)
        with task_console(logs, verbose) if logs is not None else contextlib.nullcontext():
            build(None, local=True, search_parallel=cfg.cluster.search_parallel)(**cfg.arguments(run_id, root, digest))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"run_id": run_id, "store_root": root, "request_digest": digest}


def settings_env(settings: Settings) -> dict[str, str]:
    """The variables a task process needs to reach the same stores as this one, as this one's identity."""
    env = {"AMNESIA_BUCKET": settings.bucket, "AMNESIA_EXPERIMENT": settings.experiment,
           "AMNESIA_ENCRYPT": str(settings.encrypt).lower(), "AMNESIA_KEYSTORE": settings.keystore_spec()}  # fmt: skip
    mlflow_user = settings.mlflow_tracking_username if settings.mlflow_tracking_password else None  # both or neither
    optional = {
        "AMNESIA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_TRACKING_USERNAME": mlflow_user,
        "MLFLOW_TRACKING_PASSWORD": settings.mlflow_tracking_password if mlflow_user else None,
        "AMNESIA_REVIEW_WEBHOOKS": settings.review_webhooks,
        "AMNESIA_REVIEW_WEBHOOK_SECRET": settings.review_webhook_secret,
        "AMNESIA_REVIEW_URL": settings.review_url,
    }
    for key, value in optional.items():
        if value:
            env[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env
