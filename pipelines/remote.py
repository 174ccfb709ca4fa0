"""Submit a run, or schedule recurring runs, on a Kubeflow Pipelines server (`amnesia submit|schedule`)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from amnesia.errors import ConfigError
from amnesia.pipeline_config import PipelineConfig
from pipelines.compile import compile_pipeline

_CRON_FIELD = re.compile(r"^[0-9*/,\-?LW#A-Za-z]+$")


def check_cron(expr: str) -> str:
    """KFP's cron has six fields (seconds first): '0 0 3 * * *' is 03:00 every day."""
    fields = expr.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"--cron {expr!r}: KFP wants 6 fields, seconds first (e.g. '0 0 3 * * *' for 03:00 daily)")
    return expr


def submit(cfg: PipelineConfig, host: str, run_id: str, store_root: str, request_digest: str) -> Any:
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg.cluster, Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host)
        return client.create_run_from_pipeline_package(
            str(package),
            arguments=cfg.arguments(run_id, store_root, request_digest),
            run_name=run_id,
            experiment_name=cfg.experiment,
            service_account="amnesia-runner",
        )


def schedule(cfg: PipelineConfig, host: str, cron: str, store_root: str, job_name: str) -> Any:
    """A recurring run: at most one at a time, no catch-up of missed slots, no caching (the request queue
    changes between runs), each run's id taken from its KFP job."""
    import kfp

    check_cron(cron)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg.cluster, Path(tmp) / "pipeline.yaml", run_id_from_job=True)
        client = kfp.Client(host=host)
        experiment = client.create_experiment(cfg.experiment)
        return client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=cfg.arguments("scheduled", store_root, ""),
            pipeline_package_path=str(package),
            enable_caching=False,
            service_account="amnesia-runner",
        )
