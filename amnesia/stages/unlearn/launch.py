"""The unlearn stage on several processes: torchrun runs `amnesia.stages.unlearn.rank <job uri>` on each.
The job (the stage's inputs, no secrets) and rank 0's result live in the run's folder of the store, so the
same program serves two launchers:

- `unlearn.processes` > 1 for a caller not under torchrun (the CLI, the KFP component, a notebook):
  torchrun is started here, on this machine;
- a Kubeflow Trainer TrainJob (amnesia.runtime.trainjob): torchrun on every node of the job, reading the
  nodes, processes per node and rendezvous from the PET_* variables the torch runtime sets.

Under torchrun already (`torchrun -m amnesia.cli unlearn …`) the stage runs in place: nothing is launched.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

from pydantic import BaseModel

from amnesia.core.config import ModelConfig
from amnesia.core.errors import AmnesiaError
from amnesia.results.search import SearchResult
from amnesia.results.split import SplitResult
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.layout import RESULT
from amnesia.storage.uri import join

if TYPE_CHECKING:
    from amnesia.results.unlearn import UnlearnResult


class LaunchError(AmnesiaError):
    """The processes of a several-process run did not finish; the ranks' own errors are in the log."""


class Job(BaseModel):
    """Everything a rank needs to run the stage (no secrets: the store's keys come from the environment)."""

    config: UnlearnConfig
    model: ModelConfig
    split: SplitResult
    layers: list[int] | None
    pipeline_run_id: str
    root: str
    experiment: str | None  # the MLflow experiment; None: no tracking
    result: str  # the store URI rank 0 writes the UnlearnResult to
    search: SearchResult | None = None  # the settings search that chose the config's settings


def write_job(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: ModelConfig,
    split: SplitResult,
    layers: list[int] | None,
    search: SearchResult | None = None,
) -> str:
    """The job in the run's folder, under a fresh name (an earlier attempt's result is never read)."""
    folder = join(ctx.root, "unlearn", "launch", uuid.uuid4().hex[:12])
    job = Job(
        config=cfg,
        model=model,
        split=split,
        layers=layers,
        pipeline_run_id=ctx.pipeline_run_id,
        root=ctx.root,
        experiment=ctx.lineage.experiment if ctx.lineage is not None else None,
        result=join(folder, RESULT),
        search=search,
    )
    uri = join(folder, "job.json")
    ctx.store.put_json(job.model_dump(mode="json"), uri)
    return uri


def read_result(store: ArtifactStore, job_uri: str) -> UnlearnResult | None:
    from amnesia.results.unlearn import UnlearnResult

    job = Job.model_validate(store.get_json(job_uri))
    return UnlearnResult.model_validate(store.get_json(job.result)) if store.exists(job.result) else None


def processes(cfg: UnlearnConfig) -> int:
    if cfg.processes == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return cfg.processes


def launch(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: ModelConfig,
    split: SplitResult,
    layers: list[int] | None,
    n: int,
    search: SearchResult | None = None,
) -> UnlearnResult:
    """Run the stage as n torchrun processes here; their output goes to this process's stdout and stderr."""
    job = write_job(cfg, ctx, model, split, layers, search)
    ctx.log.info("unlearn: starting %d processes (torchrun, %s)", n, cfg.strategy)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    done = subprocess.run([*cmd, "-m", "amnesia.stages.unlearn.rank", job], check=False)
    result = read_result(ctx.store, job) if done.returncode == 0 else None
    if result is None:
        raise LaunchError(f"unlearn on {n} processes failed (torchrun exit {done.returncode}); see the ranks' log")
    return result

