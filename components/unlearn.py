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
    """amnesia.runtime.tasks.unlearn: trains on the split, with the trace's layers unless the config names
    layers (trace_json may then be empty). A retried task resumes from the run's last S3 checkpoint."""
    from collections import namedtuple

    from amnesia.runtime import tasks

    outputs = tasks.unlearn(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_json, model_out
    )
    return namedtuple("UnlearnOutputs", ["model_uri", "result"])(*outputs)
