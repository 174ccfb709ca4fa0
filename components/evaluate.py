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
    plan_json: str = "",
) -> str:
    """amnesia.runtime.tasks.evaluate: the base model's result is reused from the store when its
    (model digest, data, config) was scored before. With the plan, the candidate is also scored on
    the standing obligations it names (from their sealed prompts and fingerprints). Returns the Evaluation JSON."""
    from amnesia.runtime import tasks

    return tasks.evaluate(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, role, evaluation_out,
        plan_json,
    )
