"""One rank of the unlearn stage under torchrun: `torchrun … -m amnesia.stages.unlearn.rank <job uri>`.

It reads the job (amnesia.stages.unlearn.launch wrote it), runs the stage's part of this process, and
rank 0 writes the result where the launcher reads it. Started by `launch` on this machine, or on every
node of a Kubeflow Trainer TrainJob (amnesia.runtime.trainjob).
"""

from __future__ import annotations

import sys

from amnesia.core.settings import settings
from amnesia.science.unlearning.distributed import world_from_env
from amnesia.stages.unlearn.launch import Job
from amnesia.stages.unlearn.stage import run_unlearn
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext, ensure_log_output
from amnesia.storage.lineage import Lineage
from amnesia.storage.sealing import run_key_id


def main(argv: list[str] | None = None) -> None:
    """A rank's program: the stage's part of this process, then rank 0 writes the result."""
    ensure_log_output()
    s = settings()
    store = ArtifactStore(s)
    job = Job.model_validate(store.get_json((argv or sys.argv[1:])[0]))
    main_rank = world_from_env().main
    lineage = Lineage(job.pipeline_run_id, experiment=job.experiment, settings=s) if job.experiment else None
    store.seal_key = run_key_id(job.pipeline_run_id) if s.encrypt else None
    ctx = RunContext(job.pipeline_run_id, job.root, store, lineage if main_rank else None)
    result = run_unlearn(job.config, ctx, job.model, job.split, job.layers, job.search)
    if main_rank:
        store.put_json(result.model_dump(mode="json"), job.result)


if __name__ == "__main__":
    main()
