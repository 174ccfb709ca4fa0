"""The compliance pipeline: preflight (and the run's plan) → split → trace → unlearn → evaluate (base ∥ candidate)
→ gate → dsl.If(passed)
→ register, inside an ExitHandler that closes the run's lineage whatever happens.

Every stage is a thin component over the library; configs travel as JSON strings (kfp turns dict
numbers into floats). `build(cluster)` adds the Kubernetes side (secrets as env, GPUs and resources,
node selectors, tolerations) for compiled YAML; kfp.local runs the plain DAG (`build(None)`). With
`cluster.trainjob`, the unlearn step is a launcher task that runs it as a Kubeflow Trainer TrainJob.

Where the run starts is decided at run time by preflight (amnesia.runtime.plan): trace and unlearn read the
plan's start model (the champion of the day, or the original), the base evaluation is always the original
model (relative floors), and the candidate's evaluation and the gate check the standing obligations.
"""

import json
from typing import Any

from kfp import dsl

from amnesia.core.config import HistoryConfig
from amnesia.core.settings import Settings
from amnesia.runtime.cluster_config import ClusterConfig
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage import layout as L
from components import IMAGE
from components.evaluate import evaluate
from components.finish import finish
from components.gate import gate
from components.preflight import preflight
from components.register import register
from components.search import search_choose, search_plan, search_trial
from components.split import split
from components.trace import trace
from components.unlearn import unlearn
from components.unlearn_trainjob import unlearn_trainjob
from pipelines.cluster import MLFLOW_KEYS, S3_KEYS, apply_cluster

NAME = "selective-amnesia-unlearning"
COMPUTE = L.COMPUTE_TASKS  # from the stage table: retried, and given the GPU and resources on a cluster


def build(
    cluster: ClusterConfig | None = None, run_id_from_job: bool = False, local: bool = False,
    search_parallel: int | None = None,
) -> Any:  # fmt: skip
    """The pipeline function; with a cluster config, its tasks carry the Kubernetes settings. With
    run_id_from_job (recurring runs), each run's id is the KFP job's own id, not the parameter.
    search_parallel (default: the cluster's): the settings search fans out, this many trials at a time.

    local: kfp.local (2.17) cannot resolve a dsl.If condition inside an ExitHandler ("Could not resolve
    parent input") and skips the branch, so the local DAG runs register unconditionally; the register
    component checks the gate's verdict itself and registers nothing for a failed gate."""

    parallel = search_parallel or (cluster.search_parallel if cluster is not None else None)

    def k8s(task: Any, name: str) -> Any:
        if cluster is not None:
            apply_cluster(task, cluster, compute=name in COMPUTE, notify=name == "register")
        return task

    @dsl.pipeline(name=NAME, description="Make a model forget erasure requests, prove it, register a candidate.")
    def unlearning(
        pipeline_run_id: str,
        model_uri: str,
        split_config: str,
        store_root: str = f"s3://{Settings.model_fields['bucket'].default}",
        model_name: str = PipelineConfig.model_fields["model_name"].default,
        trace_config: str = TraceConfig().model_dump_json(),  # the defaults: what a run config leaves out
        unlearn_config: str = UnlearnConfig().model_dump_json(),
        evaluate_config: str = EvaluateConfig().model_dump_json(),
        gate_config: str = GateConfig().model_dump_json(),
        request_digest: str = "",
        model_config: str = "{}",
        retention_days: int = -1,
        history_config: str = HistoryConfig().model_dump_json(),
    ) -> None:
        if run_id_from_job:
            pipeline_run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        closing = k8s(
            finish(pipeline_run_id=pipeline_run_id, store_root=store_root, retention_days=retention_days), "finish"
        )
        closing.set_caching_options(False)
        with dsl.ExitHandler(closing, name="compliance-run"):
            run = {"pipeline_run_id": pipeline_run_id, "store_root": store_root}
            checked = k8s(
                preflight(model_uri=model_uri, model_config=model_config, split_config=split_config,
                          evaluate_config=evaluate_config, model_name=model_name, history_config=history_config,
                          **run),
                "preflight",
            )  # fmt: skip
            checked.set_caching_options(False)  # the store and MLflow are checked now, not remembered
            plan = checked.outputs["plan"]
            s = k8s(split(config_json=split_config, request_digest=request_digest, plan_json=plan, **run), "split")
            sets = s.outputs["Output"]
            base = {"model_uri": model_uri, "model_config": model_config}  # the original model: relative floors
            start = {"model_uri": checked.outputs["start_uri"], "model_config": model_config}  # what is unlearned
            t = k8s(trace(config_json=trace_config, split_json=sets, **start, **run), "trace")
            traced = t.outputs["Output"]
            unlearning_args = {"config_json": unlearn_config, "split_json": sets, "trace_json": traced, **start, **run}
            if cluster is not None and cluster.trainjob is not None:
                u = k8s(unlearn_trainjob(**unlearning_args, **_trainjob_args(cluster)), "unlearn")
                gpu = cluster.accelerator or "nvidia.com/gpu"  # a TrainJob's nodes are GPU nodes
                u.set_accelerator_type(gpu).set_accelerator_limit(cluster.trainjob.gpus_per_node)  # per node
            else:  # with unlearn.search the task searches first: it scores trials as evaluate and gate will
                search = {"evaluate_config": evaluate_config, "gate_config": gate_config, "plan_json": plan,
                          "original_uri": model_uri}  # fmt: skip
                if parallel:  # the search's trials as tasks of their own; unlearn runs the choice
                    searching = {**unlearning_args, **search}
                    search |= {"search_json": _fanned_out_search(searching, parallel, k8s)}
                u = k8s(unlearn(**unlearning_args, **search), "unlearn")
            scoring = {"config_json": evaluate_config, "split_json": sets, **run}
            eb = k8s(evaluate(role="base", **base, **scoring), "evaluate-base")
            candidate = {"model_uri": u.outputs["model_uri"], "model_config": model_config}
            ec = k8s(evaluate(role="candidate", plan_json=plan, **candidate, **scoring), "evaluate-candidate")
            results = {"trace_json": traced, "unlearn_json": u.outputs["result"]}
            results |= {"base_json": eb.outputs["Output"], "candidate_json": ec.outputs["Output"]}
            g = k8s(gate(config_json=gate_config, plan_json=plan, **results, **run), "gate")
            by_name = {"trace": t, "unlearn": u, "evaluate-base": eb, "evaluate-candidate": ec}
            for name in (n for n in COMPUTE if n in by_name):  # the search's own: _fanned_out_search
                by_name[name].set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
                by_name[name].set_display_name(name.replace("-", " "))
            registration = {"model_name": model_name, "pipeline_run_id": pipeline_run_id, "split_json": sets}
            registration |= {"gate_json": g.outputs["result"], "plan_json": plan, **results}
            if local:
                k8s(register(**registration), "register").set_caching_options(False)
            else:
                with dsl.If(g.outputs["passed"] == True, name="gate-passed"):  # noqa: E712  (a KFP condition)
                    k8s(register(**registration), "register").set_caching_options(False)

    return unlearning


def _fanned_out_search(args: dict[str, Any], parallel: int, k8s: Any) -> Any:
    """search-plan → ParallelFor(search-trial) twice (the random startup round, then TPE told its results) →
    search-choose; the choice's SearchResult JSON. Each item carries what its trial needs (its settings, the
    trials told, when the search started, the upstream outputs), so a trial reads only its item and the
    pipeline's parameters (tasks.search_trial says why)."""
    fixed = {k: args[k] for k in ("config_json", "pipeline_run_id", "store_root", "model_config", "evaluate_config",
                                  "gate_config", "original_uri")}  # the pipeline's parameters  # fmt: skip
    plan1 = k8s(search_plan(round_number=1, told=[], first_items=[], **args), "search-plan")
    with dsl.ParallelFor(plan1.output, parallelism=parallel, name="search-round-1") as item:
        first = k8s(search_trial(item=item, **fixed), "search-trial")
    told = dsl.Collected(first.output)
    plan2 = k8s(search_plan(round_number=2, told=told, first_items=plan1.output, **args), "search-plan")
    told = dsl.Collected(first.output)  # a Collected feeds one task
    with dsl.ParallelFor(plan2.output, parallelism=parallel, name="search-round-2") as item:
        second = k8s(search_trial(item=item, **fixed), "search-trial")
    chosen = search_choose(first=told, last=dsl.Collected(second.output), first_items=plan1.output,
                           parallel=parallel, **args)  # fmt: skip
    k8s(chosen, "search-choose")
    for task, name in ((plan1, "plan round 1"), (first, "trial"), (plan2, "plan round 2"), (second, "trial"),
                       (chosen, "choose")):  # fmt: skip
        task.set_display_name(f"search {name}")
        task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)  # each is deterministic
    return chosen.output


def _trainjob_args(cluster: ClusterConfig) -> dict[str, str]:
    """The launcher's constants: the image its TrainJob runs, the TrainJob's shape, the secrets its nodes read."""
    assert cluster.trainjob is not None
    secrets = {cluster.s3_secret: list(S3_KEYS), cluster.mlflow_secret: list(MLFLOW_KEYS)}
    return {
        "image": cluster.image or IMAGE,
        "trainjob_json": cluster.trainjob.model_dump_json(),
        "secrets_json": json.dumps(secrets),
    }
