"""Stage 3 component: train the selected layers with the configured unlearning method; outputs the candidate model."""

from typing import NamedTuple

from kfp import dsl

from components import amnesia_component


@amnesia_component
def unlearn(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    trace_json: str,
    model_out: dsl.Output[dsl.Model],
) -> NamedTuple("UnlearnOutputs", [("model_uri", str), ("result", str)]):  # noqa: F821
    """Runs amnesia.stages.unlearn.stage.run_unlearn on the split, with the trace's layers unless the config names
    layers (trace_json may then be empty). A retried task resumes from the run's last S3 checkpoint."""
    from amnesia.core.config import ModelConfig
    from amnesia.results.split import SplitResult
    from amnesia.results.trace import TraceResult
    from amnesia.runtime.handoff import describe
    from amnesia.runtime.preflight import one_line_errors
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.stages.unlearn.stage import run_unlearn
    from amnesia.storage.context import RunContext

    layers = TraceResult.model_validate_json(trace_json).layers if trace_json else None
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "unlearn"):
        result = run_unlearn(
            UnlearnConfig.model_validate_json(config_json),
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
            layers,
        )
    from collections import namedtuple

    payload = describe(model_out, result, result.uri, result.digest)
    return namedtuple("UnlearnOutputs", ["model_uri", "result"])(result.uri, payload)
