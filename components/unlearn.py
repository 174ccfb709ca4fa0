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
    evaluate_config: str = "",
    gate_config: str = "",
    plan_json: str = "",
    original_uri: str = "",
    search_json: str = "",
) -> NamedTuple("UnlearnOutputs", [("model_uri", str), ("result", str)]):  # noqa: F821
    """amnesia.runtime.tasks.unlearn: trains on the split, with the trace's layers unless the config names
    layers (trace_json may then be empty). A retried task resumes from the run's last S3 checkpoint. With
    unlearn.search, the settings search runs first, scored as the evaluate and gate configs say, against the
    original model (original_uri); given search_json (the search fanned out as tasks), its choice runs."""
    from collections import namedtuple

    from amnesia.runtime import tasks

    outputs = tasks.unlearn(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_json, model_out,
        evaluate_config, gate_config, plan_json, original_uri, search_json,
    )  # fmt: skip
    return namedtuple("UnlearnOutputs", ["model_uri", "result"])(*outputs)
