"""Stage 3 component, cluster variant: the unlearn step as a Kubeflow Trainer TrainJob of N nodes × M GPUs.

This task's pod is a light launcher: the resources, node selector, tolerations and environment the
pipeline sets on it are passed through (dsl.TaskConfig) to the TrainJob's nodes, not applied here.
"""

from typing import NamedTuple

from kfp import dsl

from components import amnesia_component

PASSTHROUGH = [
    dsl.TaskConfigField.RESOURCES,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.ENV,
]


@amnesia_component(task_config_passthroughs=PASSTHROUGH)
def unlearn_trainjob(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    trace_json: str,
    image: str,
    trainjob_json: str,
    secrets_json: str,
    task_config: dsl.TaskConfig,
    model_out: dsl.Output[dsl.Model],
) -> NamedTuple("UnlearnOutputs", [("model_uri", str), ("result", str)]):  # noqa: F821
    """amnesia.runtime.tasks.unlearn_trainjob: writes the job to the run's folder, creates this run's TrainJob
    (or takes over its earlier one), waits for it and returns rank 0's UnlearnResult."""
    from collections import namedtuple

    from amnesia.runtime import tasks

    outputs = tasks.unlearn_trainjob(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_json, image,
        trainjob_json, secrets_json, task_config, model_out,
    )  # fmt: skip
    return namedtuple("UnlearnOutputs", ["model_uri", "result"])(*outputs)
