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
) -> str:
    """Runs amnesia.stages.split.stage.run_split; returns the SplitResult JSON and describes the stored sets.

    request_digest: the digest of the queue snapshot the run was submitted for. It keys the task's cache
    (different requests never share an entry), and a queue that changed since submission fails the run."""
    from amnesia.runtime.handoff import describe
    from amnesia.runtime.preflight import one_line_errors
    from amnesia.stages.split.config import SplitConfig
    from amnesia.stages.split.stage import SplitError, run_split
    from amnesia.storage.context import RunContext

    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "split"):
        result = run_split(SplitConfig.model_validate_json(config_json), ctx)
        if request_digest and result.request_digest != request_digest:
            raise SplitError(
                f"the request queue changed since this run was submitted (digest {str(result.request_digest)[:12]}…,"
                f" submitted for {request_digest[:12]}…); submit the run again"
            )
    return describe(splits, result, result.uri, result.digest)
