"""The unlearn stage on several processes of one machine, for a caller that is not under torchrun
(the CLI, the KFP component, a notebook): `unlearn.processes` > 1 starts torchrun with this module as
the program, hands it the stage's inputs in a file and reads rank 0's result back.

Under torchrun already (a user's own `torchrun -m amnesia.cli unlearn …`, or a Kubeflow TrainJob),
the stage runs in place: nothing is launched.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from amnesia.config import ModelConfig
from amnesia.context import RunContext, ensure_log_output
from amnesia.errors import AmnesiaError
from amnesia.settings import settings
from amnesia.split import SplitResult
from amnesia.storage import ArtifactStore
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
    result: str  # where rank 0 writes the UnlearnResult


def processes(cfg: UnlearnConfig) -> int:
    if cfg.processes == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return cfg.processes


def launch(
    cfg: UnlearnConfig, ctx: RunContext, model: ModelConfig, split: SplitResult, layers: list[int] | None, n: int
) -> UnlearnResult:
    """Run the stage as n torchrun processes; their output goes to this process's stdout and stderr."""
    from amnesia.unlearn.stage import UnlearnResult

    with tempfile.TemporaryDirectory(prefix="amnesia-unlearn-") as tmp:
        result = Path(tmp) / "result.json"
        job = Job(
            config=cfg,
            model=model,
            split=split,
            layers=layers,
            pipeline_run_id=ctx.pipeline_run_id,
            root=ctx.root,
            experiment=ctx.lineage.experiment if ctx.lineage is not None else None,
            result=str(result),
        )
        spec = Path(tmp) / "job.json"
        spec.write_text(job.model_dump_json())
        ctx.log.info("unlearn: starting %d processes (torchrun, %s)", n, cfg.strategy)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
        done = subprocess.run([*cmd, "-m", "amnesia.unlearn.launch", str(spec)], check=False)
        if done.returncode != 0 or not result.exists():
            raise LaunchError(f"unlearn on {n} processes failed (torchrun exit {done.returncode}); see the ranks' log")
        return UnlearnResult.model_validate_json(result.read_text())


def main(argv: list[str] | None = None) -> None:
    """A rank's program: the stage's part of this process, then rank 0 writes the result."""
    from amnesia.lineage import Lineage
    from amnesia.unlearn.stage import run_unlearn

    job = Job.model_validate_json(Path((argv or sys.argv[1:])[0]).read_text())
    ensure_log_output()
    s = settings()
    main_rank = world_from_env().main
    lineage = Lineage(job.pipeline_run_id, experiment=job.experiment, settings=s) if job.experiment else None
    ctx = RunContext(job.pipeline_run_id, job.root, ArtifactStore(s), lineage if main_rank else None)
    result = run_unlearn(job.config, ctx, job.model, job.split, job.layers)
    if main_rank:
        Path(job.result).write_text(result.model_dump_json())


if __name__ == "__main__":
    main()
