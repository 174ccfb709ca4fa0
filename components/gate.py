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
) -> NamedTuple("GateOutputs", [("passed", bool), ("reasons", str), ("result", str)]):  # noqa: F821
    """Runs amnesia.stages.gate.stage.run_gate; writes the HTML report as a KFP HTML artifact too."""
    from collections import namedtuple
    from pathlib import Path

    from amnesia.results.evaluation import Evaluation
    from amnesia.results.trace import TraceResult
    from amnesia.results.unlearn import UnlearnResult
    from amnesia.stages.gate.config import GateConfig
    from amnesia.stages.gate.stage import run_gate
    from amnesia.storage.context import RunContext
    from amnesia.storage.layout import REPORT_HTML
    from amnesia.storage.uri import join

    ctx = RunContext.create(pipeline_run_id, store_root)
    result = run_gate(
        GateConfig.model_validate_json(config_json),
        ctx,
        Evaluation.model_validate_json(base_json),
        Evaluation.model_validate_json(candidate_json),
        TraceResult.model_validate_json(trace_json) if trace_json else None,
        UnlearnResult.model_validate_json(unlearn_json) if unlearn_json else None,
    )
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    ctx.store.get_file(join(result.report_uri, REPORT_HTML), Path(report.path))
    report.metadata.update({"store_uri": result.report_uri, "digest": result.report_digest})
    outputs = namedtuple("GateOutputs", ["passed", "reasons", "result"])
    return outputs(result.passed, "\n".join(result.reasons), result.model_dump_json())
