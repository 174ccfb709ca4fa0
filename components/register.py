"""Stage 6 component: the gated candidate as an MLflow model version, alias `candidate` (idempotent)."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def register(
    model_name: str,
    pipeline_run_id: str,
    split_json: str,
    trace_json: str,
    unlearn_json: str,
    base_json: str,
    candidate_json: str,
    gate_json: str,
    registered: dsl.Output[dsl.Artifact],
    plan_json: str = "",
) -> str:
    """amnesia.runtime.tasks.register: a second run for the same requests and base model
    returns the existing version. Returns the Registration JSON (or, for a failed gate, why not)."""
    from amnesia.runtime import tasks

    return tasks.register(
        model_name, pipeline_run_id, split_json, trace_json, unlearn_json, base_json, candidate_json, gate_json,
        registered, plan_json,
    )  # fmt: skip
