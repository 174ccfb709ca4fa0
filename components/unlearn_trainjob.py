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
    """Runs amnesia.runtime.trainjob.unlearn: writes the job to the run's folder, creates this run's TrainJob
    (or takes over its earlier one), waits for it and returns rank 0's UnlearnResult."""
    import json

    from amnesia.core.config import ModelConfig
    from amnesia.results.split import SplitResult
    from amnesia.results.trace import TraceResult
    from amnesia.runtime import trainjob
    from amnesia.runtime.cluster_config import TrainJobConfig
    from amnesia.runtime.handoff import describe
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.storage.context import RunContext

    tj = TrainJobConfig.model_validate_json(trainjob_json)
    secrets = json.loads(secrets_json)  # {secret name: [keys]}
    env = [e for name, keys in secrets.items() for e in trainjob.secret_env(name, keys)]
    env += [{"name": "AMNESIA_IMAGE_REF", "value": image}, *(task_config.env or [])]
    nodes = trainjob.Nodes(
        count=tj.nodes,
        gpus=tj.gpus_per_node,
        resources=task_config.resources,
        env=env,
        node_selector=task_config.node_selector,
        tolerations=task_config.tolerations,
        service_account=tj.service_account,
    )
    result = trainjob.unlearn(
        UnlearnConfig.model_validate_json(config_json),
        RunContext.create(pipeline_run_id, store_root),
        ModelConfig.from_task(model_config, model_uri),
        SplitResult.model_validate_json(split_json),
        TraceResult.model_validate_json(trace_json).layers if trace_json else None,
        image,
        nodes,
        tj.runtime,
        tj.timeout_s,
        tj.poll_s,
    )
    from collections import namedtuple

    payload = describe(model_out, result, result.uri, result.digest)
    return namedtuple("UnlearnOutputs", ["model_uri", "result"])(result.uri, payload)
