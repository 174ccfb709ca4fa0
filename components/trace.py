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
    """amnesia.runtime.tasks.trace: traces the split's forget facts; returns the TraceResult JSON."""
    from amnesia.runtime import tasks

    return tasks.trace(config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_out)
