"""The pipeline's exit handler: close the run's lineage with its final status, whatever happened."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def finish(pipeline_run_id: str, store_root: str, status: dsl.PipelineTaskFinalStatus, retention_days: int = -1) -> str:
    """Sets the parent MLflow run's status, the gate's verdict when there was one, and the stage it
    stopped at when it failed (the first stage whose output is missing from the store); then purges the
    runs past the retention period (retention_days >= 0)."""
    from amnesia.runtime import tasks

    return tasks.finish(pipeline_run_id, store_root, status.state, retention_days)
