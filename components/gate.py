"""Stage 5 component: pass or fail with reasons; `passed` is what the pipeline's dsl.If tests."""

from typing import NamedTuple

from kfp import dsl

from components import amnesia_component


@amnesia_component
def gate(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    base_json: str,
    candidate_json: str,
    trace_json: str,
    unlearn_json: str,
    report: dsl.Output[dsl.HTML],
    plan_json: str = "",
) -> NamedTuple("GateOutputs", [("passed", bool), ("reasons", str), ("result", str)]):  # noqa: F821
    """amnesia.runtime.tasks.gate: writes the HTML report as a KFP HTML artifact too."""
    from collections import namedtuple

    from amnesia.runtime import tasks

    outputs = tasks.gate(
        config_json, pipeline_run_id, store_root, base_json, candidate_json, trace_json, unlearn_json, report,
        plan_json,
    )
    return namedtuple("GateOutputs", ["passed", "reasons", "result"])(*outputs)
