"""Stage 1 component: erasure requests into validated forget / retain / MIA sets."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def split(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    splits: dsl.Output[dsl.Dataset],
    request_digest: str = "",
    plan_json: str = "",
) -> str:
    """amnesia.runtime.tasks.split: returns the SplitResult JSON and describes the stored sets.

    request_digest: the digest of the queue snapshot the run was submitted for. It keys the task's cache
    (different requests never share an entry), and a queue that changed since submission fails the run.
    plan_json: the run's plan (earlier requests stay out of retain; cumulative runs forget them again)."""
    from amnesia.runtime import tasks

    return tasks.split(config_json, pipeline_run_id, store_root, splits, request_digest, plan_json)
