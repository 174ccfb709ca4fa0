"""The unlearn stage as a torchrun program: `python -m torch.distributed.run … -m amnesia.unlearn.launch
<job uri>`. The job (the stage's inputs, no secrets) and rank 0's result live in the run's folder of the
store, so the same program serves two launchers:

- `unlearn.processes` > 1 for a caller not under torchrun (the CLI, the KFP component, a notebook):
  torchrun is started here, on this machine;
- a Kubeflow Trainer TrainJob (amnesia.trainjob): torchrun on every node of the job, reading the
  nodes, processes per node and rendezvous from the PET_* variables the torch runtime sets.

Under torchrun already (`torchrun -m amnesia.cli unlearn …`) the stage runs in place: nothing is launched.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

from pydantic import BaseModel

from amnesia.config import ModelConfig
from amnesia.context import RunContext, ensure_log_output
from amnesia.errors import AmnesiaError
from amnesia.layout import RESULT
from amnesia.settings import settings
from amnesia.split import SplitResult
from amnesia.storage import ArtifactStore, join
from amnesia.unlearn.config import UnlearnConfig
from amnesia.unlearn.distributed import world_from_env

if TYPE_CHECKING:
    from amnesia.unlearn.stage import UnlearnResult


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


def write_job(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, layers: list[int] | None
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
    )
    uri = join(folder, "job.json")
    ctx.store.put_json(job.model_dump(mode="json"), uri)
    return uri


def read_result(store: ArtifactStore, job_uri: str) -> UnlearnResult | None:
    from amnesia.unlearn.stage import UnlearnResult

    job = Job.model_validate(store.get_json(job_uri))
    return UnlearnResult.model_validate(store.get_json(job.result)) if store.exists(job.result) else None


def processes(cfg: UnlearnConfig) -> int:
    if cfg.processes == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return cfg.processes


def launch(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, layers: list[int] | None, n: int
) -> UnlearnResult:
    """Run the stage as n torchrun processes here; their output goes to this process's stdout and stderr."""
    job = write_job(cfg, ctx, model, split, layers)
    ctx.log.info("unlearn: starting %d processes (torchrun, %s)", n, cfg.strategy)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    done = subprocess.run([*cmd, "-m", "amnesia.unlearn.launch", job], check=False)
    result = read_result(ctx.store, job) if done.returncode == 0 else None
    if result is None:
        raise LaunchError(f"unlearn on {n} processes failed (torchrun exit {done.returncode}); see the ranks' log")
    return result


def main(argv: list[str] | None = None) -> None:
    """A rank's program: the stage's part of this process, then rank 0 writes the result."""
    from amnesia.lineage import Lineage
    from amnesia.sealing import run_key_id
    from amnesia.unlearn.stage import run_unlearn

    ensure_log_output()
    s = settings()
    store = ArtifactStore(s)
    job = Job.model_validate(store.get_json((argv or sys.argv[1:])[0]))
    main_rank = world_from_env().main
    lineage = Lineage(job.pipeline_run_id, experiment=job.experiment, settings=s) if job.experiment else None
    store.seal_key = run_key_id(job.pipeline_run_id) if s.encrypt else None
    ctx = RunContext(job.pipeline_run_id, job.root, store, lineage if main_rank else None)
    result = run_unlearn(job.config, ctx, job.model, job.split, job.layers)
    if main_rank:
        store.put_json(result.model_dump(mode="json"), job.result)


if __name__ == "__main__":
    main()
