"""Stage 4 component: the official scorer's metrics, MIA and MMLU for one model (base or candidate)."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def evaluate(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    role: str,
    evaluation_out: dsl.Output[dsl.Metrics],
) -> str:
    """Runs amnesia.stages.evaluate.stage.run_evaluate; the base model's result is reused from the store when its
    (model digest, data, config) was scored before. Returns the Evaluation JSON."""
    from amnesia.core.config import ModelConfig
    from amnesia.results.split import SplitResult
    from amnesia.runtime.preflight import one_line_errors
    from amnesia.stages.evaluate.config import EvaluateConfig
    from amnesia.stages.evaluate.stage import run_evaluate
    from amnesia.storage.context import RunContext

    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, f"evaluate-{role}"):
        result = run_evaluate(
            EvaluateConfig.model_validate_json(config_json),
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
            role,
        )
    for name, value in result.flat().items():  # KFP's metrics view (aggregates only)
        evaluation_out.log_metric(name, value)
    evaluation_out.metadata.update({"store_uri": result.uri, "digest": result.digest})
    return result.model_dump_json()
