"""The whole pipeline: `amnesia run` (kfp.local), `compile`, `submit` and `schedule` (a cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from amnesia.cli.base import cli, client_settings
from amnesia.core.settings import load_settings

# ---------------------------------------------------------------- the pipeline


def _pipeline_config(config_path: Path, experiment: str | None = None) -> Any:
    """The run config; `experiment` (a command's --experiment) overrides its experiment."""
    from amnesia.core.config import load_run_config
    from amnesia.runtime.pipeline_config import PipelineConfig

    cfg = load_run_config(config_path, PipelineConfig)
    return cfg.model_copy(update={"experiment": experiment}) if experiment else cfg


@cli.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.runtime.pipeline_config.PipelineConfig).")  # fmt: skip
@click.option("--run-id", help="Pipeline run id (default: <name>-<time>-<random>).")
@click.option("-v", "--verbose", is_flag=True, help="Show every task's whole output (else: in per-task log files).")
def run_cmd(config_path: Path, run_id: str | None, verbose: bool) -> None:
    """Run the whole DAG in kfp.local against the local stack (or the S3/MLflow the environment names)."""
    import time
    import uuid

    from amnesia.runtime.summary import summarize
    from pipelines.local import run_local

    cfg = _pipeline_config(config_path)
    settings = client_settings()
    rid = run_id or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = Path(settings.home) / "kfp-local"
    logs = workdir / rid / "logs"
    click.echo(f"run     {rid}: preflight → split → trace → unlearn → evaluate → gate → register (kfp.local)")
    interrupted = False
    try:
        run_local(cfg, settings, rid, workdir, logs=logs, verbose=verbose)
    except KeyboardInterrupt:  # Ctrl-C: no traceback; the summary says where it stopped and what is left
        interrupted = True
    finally:
        for line in summarize(cfg, settings, rid, reports=Path(settings.home) / "reports"):
            click.echo(line)
        click.echo(f"logs    {logs} (one file per task)")
    if interrupted:
        raise SystemExit(130)


@cli.command("compile")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="Pipeline config YAML: its `cluster:` section (secrets, GPUs, node selectors, tolerations).",
)
@click.option("--image", help="REPO:TAG of the project image for every component (default: the package version).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Where to write the pipeline YAML.")  # fmt: skip
def compile_cmd(config_path: Path | None, image: str | None, out: Path) -> None:
    """Write the pipeline YAML for a cluster (KFP v2)."""
    from amnesia.core.config import load_yaml, parse_model
    from amnesia.runtime.cluster_config import ClusterConfig
    from pipelines.compile import compile_pipeline

    data = load_yaml(config_path).get("cluster", {}) if config_path else {}
    cluster = parse_model(ClusterConfig, data, f"{config_path}: cluster")
    if image:
        cluster = cluster.model_copy(update={"image": image})
    compile_pipeline(cluster, out)
    click.echo(f"wrote {out}")


def _server_options(command: Any) -> Any:
    """--host, --namespace, --experiment, --token: where and as whom to reach Kubeflow Pipelines."""
    options = [
        click.option("--host", required=True, help="The KFP API address, e.g. https://kubeflow.example/pipeline."),
        click.option("--namespace", help="Multi-user Kubeflow: the profile namespace to run in."),
        click.option("--experiment", help="KFP experiment (default: the config's experiment)."),
        click.option(
            "--token", envvar="KF_PIPELINES_TOKEN", help="Bearer token for the KFP API (env KF_PIPELINES_TOKEN)."
        ),
    ]
    for option in reversed(options):  # click lists options in decorator order
        command = option(command)
    return command


def _server(host: str, namespace: str | None, token: str | None) -> Any:
    from pipelines.remote import Server

    return Server(host=host, namespace=namespace, token=token)


@cli.command("submit")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.runtime.pipeline_config.PipelineConfig).")  # fmt: skip
@_server_options
@click.option("--run-id", help="Pipeline run id (default: <name>-<time>-<random>).")
def submit_cmd(
    config_path: Path, host: str, namespace: str | None, experiment: str | None, token: str | None, run_id: str | None
) -> None:
    """Compile and start one run on a Kubeflow Pipelines server, for the requests pending now."""
    import time
    import uuid

    from amnesia.storage.artifacts import ArtifactStore
    from pipelines.local import queue_digest
    from pipelines.remote import submit

    cfg = _pipeline_config(config_path, experiment)
    settings = client_settings()
    root = cfg.store_root(settings.bucket)
    digest = queue_digest(ArtifactStore(settings), root) if cfg.split.requests == "queue" else ""
    rid = run_id or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    result = submit(cfg, _server(host, namespace, token), rid, root, digest)
    click.echo(f"submitted {rid}: KFP run {result.run_id}")


@cli.command("schedule")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.runtime.pipeline_config.PipelineConfig).")  # fmt: skip
@_server_options
@click.option("--cron", required=True, help="Six fields, seconds first: '0 0 3 * * *' = 03:00 daily.")
@click.option("--name", "job_name", default="amnesia-scheduled", show_default=True, help="The recurring run's name.")
def schedule_cmd(
    config_path: Path, host: str, namespace: str | None, experiment: str | None, token: str | None, cron: str,
    job_name: str,
) -> None:  # fmt: skip
    """A recurring run (one at a time, no catch-up) that works through the request queue on a schedule."""
    from pipelines.remote import check_cron, schedule

    check_cron(cron)
    cfg = _pipeline_config(config_path, experiment)
    settings = load_settings()
    job = schedule(cfg, _server(host, namespace, token), cron, cfg.store_root(settings.bucket), job_name)
    click.echo(f"scheduled {job_name} ({cron}): recurring run {job.recurring_run_id}")


