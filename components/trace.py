"""Stage 2 component: causal tracing of the forget facts and the choice of layers to unlearn."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def trace(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    trace_out: dsl.Output[dsl.Artifact],
) -> str:
    """Runs amnesia.stages.trace.stage.run_trace on the split's forget facts; returns the TraceResult JSON."""
    from amnesia.core.config import ModelConfig
    from amnesia.results.split import SplitResult
    from amnesia.runtime.handoff import describe
    from amnesia.runtime.preflight import one_line_errors
    from amnesia.stages.trace.config import TraceConfig
    from amnesia.stages.trace.stage import run_trace
    from amnesia.storage.context import RunContext

    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "trace"):
        result = run_trace(
            TraceConfig.model_validate_json(config_json),
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
        )
    return describe(trace_out, result, result.uri, result.digest)
