"""What each pipeline task does, from its KFP parameters to its outputs: one function per component, so a
component's body is one call here (components/ keeps only the explicit KFP signatures).

Parameters arrive as KFP passes them (configs and results as JSON strings: kfp turns the numbers in a dict
into floats). Output artifacts are duck-typed (`.path`, `.metadata`, `.log_metric`): no kfp import here.
Every task runs inside the error boundary (amnesia.runtime.boundary).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amnesia.core.config import HistoryConfig, ModelConfig
from amnesia.core.settings import settings
from amnesia.governance.purge import retention_at_end
from amnesia.governance.registry import register_candidate
from amnesia.results.evaluation import Evaluation
from amnesia.results.gate import GateResult
from amnesia.results.plan import RunPlan
from amnesia.results.search import SearchResult, Trial
from amnesia.results.split import SplitResult
from amnesia.results.trace import TraceResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.runtime import trainjob
from amnesia.runtime.boundary import one_line_errors
from amnesia.runtime.cluster_config import TrainJobConfig
from amnesia.runtime.handoff import describe
from amnesia.runtime.preflight import run_preflight
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.evaluate.stage import run_evaluate
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.gate.stage import run_gate
from amnesia.stages.search import fanout
from amnesia.stages.search.stage import search_then_unlearn
from amnesia.stages.split.config import SplitConfig
from amnesia.stages.split.stage import SplitError, run_split
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.trace.stage import run_trace
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.layout import REPORT_HTML, run_root
from amnesia.storage.lineage import Lineage, finish_run
from amnesia.storage.uri import join


def _layers(trace_json: str) -> list[int] | None:
    """The trace's layers; None when the unlearn config names its own (the trace may then be skipped)."""
    return TraceResult.model_validate_json(trace_json).layers if trace_json else None


def _plan(plan_json: str) -> RunPlan | None:
    return RunPlan.model_validate_json(plan_json) if plan_json else None


def preflight(
    pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_config: str, evaluate_config: str,
    model_name: str = "amnesia-model", history_config: str = "{}",
) -> tuple[str, str]:  # fmt: skip
    """(the RunPlan JSON, the URI of the model the run starts from)."""
    ctx = RunContext.create(pipeline_run_id, store_root, track=False)  # MLflow is one of the checks
    with one_line_errors(ctx, "preflight"):
        ctx.lineage = Lineage(pipeline_run_id)
        result = run_preflight(
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitConfig.model_validate_json(split_config),
            EvaluateConfig.model_validate_json(evaluate_config),
            model_name,
            HistoryConfig.model_validate_json(history_config or "{}"),
        )
    return result.plan.model_dump_json(), result.plan.start_uri


def split(
    config_json: str, pipeline_run_id: str, store_root: str, splits: Any, request_digest: str = "", plan_json: str = ""
) -> str:
    """request_digest: the queue snapshot the run was submitted for; a queue changed since fails the run."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "split"):
        result = run_split(SplitConfig.model_validate_json(config_json), ctx, _plan(plan_json))
        if request_digest and result.request_digest != request_digest:
            raise SplitError(
                f"the request queue changed since this run was submitted (digest {str(result.request_digest)[:12]}…,"
                f" submitted for {request_digest[:12]}…); submit the run again"
            )
    return describe(splits, result, result.uri, result.digest)


def trace(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    trace_out: Any,
) -> str:  # fmt: skip
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "trace"):
        result = run_trace(
            TraceConfig.model_validate_json(config_json),
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
        )
    return describe(trace_out, result, result.uri, result.digest)


def unlearn(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    trace_json: str, model_out: Any, evaluate_config: str = "", gate_config: str = "", plan_json: str = "",
    original_uri: str = "", search_json: str = "",
) -> tuple[str, str]:  # fmt: skip
    """(the candidate's URI, the UnlearnResult JSON). A retried task resumes from the run's last checkpoint.
    With unlearn.search, the settings search runs first (scored against the evaluate and gate configs, the
    original model as the base) and the stage then runs its chosen settings; given search_json (the search
    fanned out as tasks of its own), the stage runs that search's choice."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "unlearn"):
        model = ModelConfig.from_task(model_config, model_uri)
        result = search_then_unlearn(
            UnlearnConfig.model_validate_json(config_json), ctx, model, SplitResult.model_validate_json(split_json),
            _layers(trace_json), EvaluateConfig.model_validate_json(evaluate_config) if evaluate_config else None,
            GateConfig.model_validate_json(gate_config) if gate_config else None, _plan(plan_json),
            ModelConfig.from_task(model_config, original_uri or model_uri),
            SearchResult.model_validate_json(search_json) if search_json else None,
        )  # fmt: skip
    return result.uri, describe(model_out, result, result.uri, result.digest)


# ---------------------------------------------------------------- the settings search, fanned out


def _searching(
    config_json: str, model_uri: str, model_config: str, split_json: str, evaluate_config: str, gate_config: str,
    plan_json: str, original_uri: str,
) -> dict[str, Any]:  # fmt: skip
    """What every search task reads, from its KFP parameters."""
    return {
        "cfg": UnlearnConfig.model_validate_json(config_json),
        "model": ModelConfig.from_task(model_config, model_uri),
        "split": SplitResult.model_validate_json(split_json),
        "evaluate": EvaluateConfig.model_validate_json(evaluate_config),
        "gate": GateConfig.model_validate_json(gate_config),
        "plan": _plan(plan_json),
        "original": ModelConfig.from_task(model_config, original_uri or model_uri),
    }


def _told(trials: list[str]) -> list[Trial]:
    return [Trial.model_validate_json(t) for t in trials if t]


def search_plan(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    trace_json: str, evaluate_config: str, gate_config: str, plan_json: str, original_uri: str, round_: int,
    told: list[str], first_items: list[str],
) -> list[str]:  # fmt: skip
    """The round's items (JSON), each self-contained: its settings, the trials told, when the search started,
    and the upstream outputs its trial reads (the start model, split, trace and plan). told: the earlier round's
    trial records; first_items: round 1's items (round 2 reads the start time there)."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "search-plan"):
        a = _searching(config_json, model_uri, model_config, split_json,
                       evaluate_config, gate_config, plan_json, original_uri)  # fmt: skip
        started = fanout.started_at(first_items) if first_items else None
        upstream = {"model_uri": model_uri, "split_json": split_json, "trace_json": trace_json, "plan_json": plan_json}
        return fanout.plan_round(a["cfg"], ctx, a["model"], a["split"], a["evaluate"], a["plan"], a["original"],
                                 round_, _told(told), started, upstream)  # fmt: skip


def search_trial(
    config_json: str, pipeline_run_id: str, store_root: str, model_config: str, evaluate_config: str,
    gate_config: str, original_uri: str, item: str,
) -> str:  # fmt: skip
    """The trial's record as JSON ("" for a round's skip item). What upstream tasks made (the start model, split,
    trace, plan) comes in the item: kfp.local 2.17 hands a loop's task the loop item in place of every other
    task's output it reads, so a trial reads only its item and the pipeline's own parameters."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "search-trial"):
        up = fanout.inputs_in(item)
        if not up:  # a skip item
            return ""
        a = _searching(config_json, up["model_uri"], model_config, up["split_json"],
                       evaluate_config, gate_config, up["plan_json"], original_uri)  # fmt: skip
        trial = fanout.run_trial(a["cfg"], ctx, a["model"], a["split"], _layers(up["trace_json"]), a["evaluate"],
                                 a["gate"], a["plan"], a["original"], item)  # fmt: skip
    return trial.model_dump_json() if trial is not None else ""


def search_choose(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    trace_json: str, evaluate_config: str, gate_config: str, plan_json: str, original_uri: str, first: list[str],
    last: list[str], first_items: list[str], parallel: int,
) -> str:  # fmt: skip
    """The SearchResult JSON ("" without unlearn.search): what the unlearn task then runs."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "search-choose"):
        a = _searching(config_json, model_uri, model_config, split_json,
                       evaluate_config, gate_config, plan_json, original_uri)  # fmt: skip
        found = fanout.choose(a["cfg"], ctx, a["model"], a["split"], _layers(trace_json), a["evaluate"], a["gate"],
                              a["plan"], a["original"], _told(first) + _told(last), fanout.started_at(first_items),
                              parallel)  # fmt: skip
    return found.model_dump_json() if found is not None else ""


def unlearn_trainjob(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    trace_json: str, image: str, trainjob_json: str, secrets_json: str, task_config: Any, model_out: Any,
) -> tuple[str, str]:  # fmt: skip
    """The unlearn step as this run's TrainJob; the task's passed-through resources, node selector,
    tolerations and environment (dsl.TaskConfig) go to the job's nodes."""
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
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "unlearn"):
        cfg = UnlearnConfig.model_validate_json(config_json)
        if cfg.search is not None:  # the trials would run on the launcher's pod, not the job's GPUs
            raise ValueError("unlearn.search does not run under cluster.trainjob yet: search in a plain run (its "
                             "unlearn task gets the GPU), then give the chosen settings to the TrainJob run")
        result = trainjob.unlearn(
            cfg,
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
            _layers(trace_json),
            image,
            nodes,
            tj.runtime,
            tj.timeout_s,
            tj.poll_s,
        )
    return result.uri, describe(model_out, result, result.uri, result.digest)


def evaluate(
    config_json: str, pipeline_run_id: str, store_root: str, model_uri: str, model_config: str, split_json: str,
    role: str, evaluation_out: Any, plan_json: str = "",
) -> str:  # fmt: skip
    """One model's Evaluation JSON; its aggregates also go to KFP's metrics view."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, f"evaluate-{role}"):
        result = run_evaluate(
            EvaluateConfig.model_validate_json(config_json),
            ctx,
            ModelConfig.from_task(model_config, model_uri),
            SplitResult.model_validate_json(split_json),
            role,
            _plan(plan_json),
        )
    for name, value in result.flat().items():
        evaluation_out.log_metric(name, value)
    evaluation_out.metadata.update({"store_uri": result.uri, "digest": result.digest})
    return result.model_dump_json()


def gate(
    config_json: str, pipeline_run_id: str, store_root: str, base_json: str, candidate_json: str, trace_json: str,
    unlearn_json: str, report: Any, plan_json: str = "",
) -> tuple[bool, str, str]:  # fmt: skip
    """(passed, the reasons one a line, the GateResult JSON); the HTML report becomes a KFP HTML artifact."""
    ctx = RunContext.create(pipeline_run_id, store_root)
    with one_line_errors(ctx, "gate"):
        result = run_gate(
            GateConfig.model_validate_json(config_json),
            ctx,
            Evaluation.model_validate_json(base_json),
            Evaluation.model_validate_json(candidate_json),
            TraceResult.model_validate_json(trace_json) if trace_json else None,
            UnlearnResult.model_validate_json(unlearn_json) if unlearn_json else None,
            _plan(plan_json),
        )
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        ctx.store.get_file(join(result.report_uri, REPORT_HTML), Path(report.path))
    report.metadata.update({"store_uri": result.report_uri, "digest": result.report_digest})
    return result.passed, "\n".join(result.reasons), result.model_dump_json()


def register(
    model_name: str, pipeline_run_id: str, split_json: str, trace_json: str, unlearn_json: str, base_json: str,
    candidate_json: str, gate_json: str, registered: Any, plan_json: str = "",
) -> str:  # fmt: skip
    """The Registration JSON; for a failed gate (dsl.If keeps it out on a cluster; this guards every other
    path) nothing is registered and the reasons are returned. A second run for the same requests and base
    model returns the existing version."""
    gate_result = GateResult.model_validate_json(gate_json)
    if not gate_result.passed:
        registered.metadata.update({"registered": False})
        return json.dumps({"registered": False, "reasons": gate_result.reasons})
    s = settings()
    split_result = SplitResult.model_validate_json(split_json)
    run_folder = split_result.uri.rsplit("/", 1)[0]  # <root>/runs/<id>: where the error line goes
    with one_line_errors(RunContext(pipeline_run_id, run_folder, ArtifactStore(s)), "register"):
        result = register_candidate(
            s,
            model_name,
            pipeline_run_id,
            split_result,
            TraceResult.model_validate_json(trace_json) if trace_json else None,
            UnlearnResult.model_validate_json(unlearn_json),
            Evaluation.model_validate_json(base_json),
            Evaluation.model_validate_json(candidate_json),
            gate_result,
            Lineage(pipeline_run_id, settings=s).parent_run_id(),
            _plan(plan_json),
        )
    registered.metadata.update({"registered": True, "name": result.name, "version": result.version})
    return result.model_dump_json()


def finish(pipeline_run_id: str, store_root: str, state: str, retention_days: int = -1) -> str:
    """The exit handler: close the run's lineage with its final status (the verdict, the stage it stopped at),
    then purge the runs past the retention period (retention_days >= 0)."""
    ctx = RunContext(pipeline_run_id, run_root(store_root, pipeline_run_id), ArtifactStore(settings()))
    with one_line_errors(ctx, "finish"):
        final = finish_run(pipeline_run_id, store_root, state)
        retention_at_end(store_root, retention_days)
    return final
