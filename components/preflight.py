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
    """amnesia.runtime.tasks.preflight: a failure is one line (and the run stops, not retried)."""
    from amnesia.runtime import tasks

    return tasks.preflight(pipeline_run_id, store_root, model_uri, model_config, split_config, evaluate_config)
