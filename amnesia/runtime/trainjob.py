"""The unlearn stage as a Kubeflow Trainer TrainJob: N nodes × M GPUs of torchrun, started and awaited
by a light launcher task of the pipeline (its pod holds no GPU).

The TrainJob runs the project image's `torchrun -m amnesia.stages.unlearn.rank <job uri>`; the torch
runtime gives torchrun the node count, processes per node, node rank and rendezvous (PET_*
variables). Inputs and rank 0's result travel through the run's folder in the store, as they do for
a local several-process run; the store's and MLflow's credentials come from the same secrets as every
other task. One TrainJob per pipeline run (its name derives from the run id): a retried launcher
finds the job it started, waits on it if it runs, and replaces it if it failed; training itself resumes
from the run's checkpoints.

Checked here: the manifest against the Trainer API's schema (kubeflow-trainer-api), the condition
logic, and the TrainJob's own command run with torchrun on this machine. Not run against a live
cluster from here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amnesia.core.errors import AmnesiaError

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
JOB_ANNOTATION = "amnesia.dev/job-uri"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
log = logging.getLogger("amnesia.runtime.trainjob")


class TrainJobError(AmnesiaError):
    """The TrainJob failed, or did not finish in time; the message names it and says why."""


def name_for(pipeline_run_id: str) -> str:
    """A DNS-1123 name, the same for every attempt of a run's unlearn step."""
    return "amnesia-unlearn-" + hashlib.sha256(pipeline_run_id.encode()).hexdigest()[:12]


def secret_env(secret: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Each key of the secret as the environment variable of the same name (optional: a secret may
    leave MLflow's user and password out)."""
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": True}}} for k in keys]


@dataclass(frozen=True)
class Nodes:
    """What each node of the TrainJob gets: pod-spec fragments as Kubernetes JSON (a KFP TaskConfig's)."""

    count: int
    gpus: int
    resources: Mapping[str, Any] | None = None
    env: Sequence[Mapping[str, Any]] = ()
    node_selector: Mapping[str, str] | None = None
    tolerations: Sequence[Mapping[str, Any]] | None = None
    service_account: str | None = None  # reads the sealed forget sets' data key


def manifest(
    name: str, namespace: str, image: str, job_uri: str, nodes: Nodes, runtime: str = "torch-distributed"
) -> dict[str, Any]:
    trainer: dict[str, Any] = {
        "image": image,
        "command": ["torchrun", "-m", "amnesia.stages.unlearn.rank", job_uri],
        "numNodes": nodes.count,
        "numProcPerNode": nodes.gpus,
        "env": [dict(e) for e in nodes.env],
    }
    if nodes.resources:
        trainer["resourcesPerNode"] = dict(nodes.resources)
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "selective-amnesia", "amnesia.dev/stage": "unlearn"},
            "annotations": {JOB_ANNOTATION: job_uri},
        },
        "spec": {"runtimeRef": {"name": runtime}, "trainer": trainer},
    }
    fields = (("nodeSelector", nodes.node_selector), ("tolerations", nodes.tolerations),
              ("serviceAccountName", nodes.service_account))  # fmt: skip
    placement = {k: v for k, v in fields if v}
    if placement:  # on the runtime's "node" job: the pods that train
        pod = {"spec": {"template": {"spec": placement}}}
        patch = {"template": {"spec": {"replicatedJobs": [{"name": "node", "template": pod}]}}}
        body["spec"]["runtimePatches"] = [{"manager": "selective-amnesia", "trainingRuntimeSpec": patch}]
    return body


def verdict(obj: Mapping[str, Any]) -> str | None:
    """'complete', or None while it runs; raises with the TrainJob's own reason when it failed."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "complete"
        if cond.get("type") == "Failed":
            name = obj.get("metadata", {}).get("name", "?")
            raise TrainJobError(f"TrainJob {name} failed: {cond.get('reason', '')}: {cond.get('message', '')}")
    return None


def in_cluster_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        raise TrainJobError(f"not inside a Kubernetes pod ({NAMESPACE_FILE} is missing): no namespace") from None


def run(body: dict[str, Any], timeout_s: float, poll_s: float, api: Any = None) -> str:
    """Create the TrainJob (or take over this run's earlier one), wait until it completes; the job URI
    of the TrainJob that ran (an adopted one keeps its own)."""
    from kubernetes import client, config

    if api is None:
        config.load_incluster_config()
        api = client.CustomObjectsApi()
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    current = _adopt_or_create(api, body)
    deadline = time.monotonic() + timeout_s
    while verdict(current) is None:
        if time.monotonic() > deadline:
            raise TrainJobError(f"TrainJob {ns}/{name} did not finish within {timeout_s:.0f} s (it is left running)")
        time.sleep(poll_s)
        current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    log.info("trainjob: %s/%s complete", ns, name)
    return str(current["metadata"].get("annotations", {}).get(JOB_ANNOTATION, meta["annotations"][JOB_ANNOTATION]))


def _adopt_or_create(api: Any, body: dict[str, Any]) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        log.info("trainjob: created %s/%s", ns, name)
        return dict(created)
    except ApiException as err:
        if err.status != 409:
            raise TrainJobError(f"creating TrainJob {ns}/{name} failed: {err.status} {err.reason}") from None
    existing = dict(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
    try:
        verdict(existing)
        log.info("trainjob: %s/%s exists (an earlier attempt of this run): waiting on it", ns, name)
        return existing
    except TrainJobError:
        log.info("trainjob: %s/%s failed before: replacing it (training resumes from its checkpoints)", ns, name)
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, propagation_policy="Foreground")
        for _ in range(60):
            try:
                api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            except ApiException:
                break
            time.sleep(2)
        return dict(api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))


def unlearn(
    cfg: Any,
    ctx: Any,
    model: Any,
    split: Any,
    layers: list[int] | None,
    image: str,
    nodes: Nodes,
    runtime: str = "torch-distributed",
    timeout_s: float = 6 * 3600,
    poll_s: float = 20.0,
    namespace: str | None = None,
) -> Any:
    """The unlearn stage as this run's TrainJob; its UnlearnResult (written by rank 0 to the store)."""
    from amnesia.stages.unlearn.launch import read_result, write_job

    job = write_job(cfg, ctx, model, split, layers)
    body = manifest(name_for(ctx.pipeline_run_id), namespace or in_cluster_namespace(), image, job, nodes, runtime)
    ran = run(body, timeout_s, poll_s)
    result = read_result(ctx.store, ran)
    if result is None:
        raise TrainJobError(f"TrainJob {body['metadata']['name']} completed but wrote no result at its job {ran}")
    return result
