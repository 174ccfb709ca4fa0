"""Stage 0 component: check config, model folder, data, MMLU source, store and MLflow before any compute, and
plan the run: the model it starts from (the champion, pinned, or the original) and the obligations it keeps."""

from typing import NamedTuple

from components import amnesia_component


@amnesia_component
def preflight(
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_config: str,
    evaluate_config: str,
    model_name: str = "amnesia-model",
    history_config: str = "{}",
) -> NamedTuple("PreflightOutputs", [("plan", str), ("start_uri", str)]):  # noqa: F821
    """amnesia.runtime.tasks.preflight: a failure is one line (and the run stops, not retried)."""
    from collections import namedtuple

    from amnesia.runtime import tasks

    outputs = tasks.preflight(
        pipeline_run_id, store_root, model_uri, model_config, split_config, evaluate_config, model_name, history_config
    )
    return namedtuple("PreflightOutputs", ["plan", "start_uri"])(*outputs)
