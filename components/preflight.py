"""Stage 0 component: check config, model folder, data, MMLU source, store and MLflow before any compute."""

from components import amnesia_component


@amnesia_component
def preflight(
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_config: str,
    evaluate_config: str,
) -> str:
    """Runs amnesia.runtime.preflight.run_preflight; a failure is one line (and the run stops, not retried)."""
    from amnesia.core.config import ModelConfig
    from amnesia.runtime.preflight import one_line_errors, run_preflight
    from amnesia.stages.evaluate.config import EvaluateConfig
    from amnesia.stages.split.config import SplitConfig
    from amnesia.storage.context import RunContext
    from amnesia.storage.lineage import Lineage

    ctx = RunContext.create(pipeline_run_id, store_root, track=False)  # MLflow is one of the checks
    with one_line_errors(ctx, "preflight"):
        ctx.lineage = Lineage(pipeline_run_id)
        model = ModelConfig.from_task(model_config, model_uri)
        split = SplitConfig.model_validate_json(split_config)
        result = run_preflight(ctx, model, split, EvaluateConfig.model_validate_json(evaluate_config))
    return result.model_dump_json()
