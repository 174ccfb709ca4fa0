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
) -> str:
    """Runs amnesia.governance.registry.register_candidate; a second run for the same requests and base model
    returns the existing version. Returns the Registration JSON (or, for a failed gate, why not)."""
    import json

    from amnesia.core.settings import settings
    from amnesia.governance.registry import register_candidate
    from amnesia.results.evaluation import Evaluation
    from amnesia.results.gate import GateResult
    from amnesia.results.split import SplitResult
    from amnesia.results.trace import TraceResult
    from amnesia.results.unlearn import UnlearnResult
    from amnesia.storage.lineage import Lineage

    gate = GateResult.model_validate_json(gate_json)
    if not gate.passed:  # dsl.If keeps a failed candidate out on a cluster; this guards every other path
        registered.metadata.update({"registered": False})
        return json.dumps({"registered": False, "reasons": gate.reasons})
    s = settings()
    result = register_candidate(
        s,
        model_name,
        pipeline_run_id,
        SplitResult.model_validate_json(split_json),
        TraceResult.model_validate_json(trace_json) if trace_json else None,
        UnlearnResult.model_validate_json(unlearn_json),
        Evaluation.model_validate_json(base_json),
        Evaluation.model_validate_json(candidate_json),
        gate,
        Lineage(pipeline_run_id, settings=s).parent_run_id(),
    )
    registered.metadata.update({"registered": True, "name": result.name, "version": result.version})
    return result.model_dump_json()
