"""The cluster path for unlearning: the TrainJob manifest meets the Kubeflow Trainer API's schema, the
compiled pipeline with the TrainJob option loads back and matches its golden file, the TrainJob's own
command runs here under torchrun the way the torch runtime starts it, and the launcher's wait logic
reads the TrainJob's conditions. Not run here: a live cluster (see the README)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import components
from kubeflow_trainer_api import models as tapi
from pydantic import BaseModel

from amnesia.demo.prepare import DemoArtifacts
from amnesia.runtime import trainjob
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.launch import read_result, write_job
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.models import as_model_config
from tests.test_pipeline import compile_against_golden
from tests.test_unlearn import _split

ROOT = Path(__file__).resolve().parent.parent
NODES = trainjob.Nodes(
    count=2,
    gpus=4,
    resources={"limits": {"nvidia.com/gpu": "4"}, "requests": {"cpu": "8", "memory": "64Gi"}},
    env=trainjob.secret_env("amnesia-s3", ["AWS_ACCESS_KEY_ID"]) + [{"name": "AMNESIA_IMAGE_REF", "value": "i:1"}],
    node_selector={"gpu": "h100"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    service_account="amnesia-runner",
)


def _model_of(annotation: Any) -> Any:
    """The pydantic model (or list / dict of one) inside an Optional[...] annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _model_of(args[0]) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation


def unknown_keys(model: type[BaseModel], obj: Any, path: str = "") -> list[str]:
    """Every key of obj the schema does not define (the generated models ignore them; the API server
    prunes or rejects them), following the models all the way down."""
    if not isinstance(obj, dict):
        return []
    fields = {(f.alias or n): f.annotation for n, f in model.model_fields.items()}
    out = []
    for key, value in obj.items():
        if key not in fields:
            out.append(f"{path}.{key}")
            continue
        inner = _model_of(fields[key])
        origin, args = typing.get_origin(inner), typing.get_args(inner)
        if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            out += [k for i, v in enumerate(value) for k in unknown_keys(args[0], v, f"{path}.{key}[{i}]")]
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            out += unknown_keys(inner, value, f"{path}.{key}")
    return out


def test_the_manifest_meets_the_trainjob_schema() -> None:
    body = trainjob.manifest("amnesia-unlearn-x", "ml", "img:1", "s3://b/runs/r/unlearn/launch/a/job.json", NODES)
    parsed = tapi.TrainerV1alpha1TrainJob.from_dict(body)  # types, required fields
    assert parsed is not None and parsed.spec.trainer.num_nodes == 2 and parsed.spec.trainer.num_proc_per_node == 4
    assert unknown_keys(tapi.TrainerV1alpha1TrainJob, body) == []
    assert parsed.spec.runtime_patches[0].training_runtime_spec.template.spec.replicated_jobs[0].name == "node"
    pod = parsed.spec.runtime_patches[0].training_runtime_spec.template.spec.replicated_jobs[0].template.spec
    assert (
        pod.template.spec.node_selector == {"gpu": "h100"} and pod.template.spec.tolerations[0].key == "nvidia.com/gpu"
    )
    assert pod.template.spec.service_account_name == "amnesia-runner"  # it may read the runs' data keys
    assert body["spec"]["trainer"]["command"][:3] == ["torchrun", "-m", "amnesia.stages.unlearn.rank"]
    # the checker can fail: a misplaced key (podSpecOverrides is the older API's) is named
    body["spec"]["podSpecOverrides"] = [{"targetJobs": [{"name": "node"}]}]
    body["spec"]["trainer"]["numProcsPerNode"] = 4
    assert unknown_keys(tapi.TrainerV1alpha1TrainJob, body) == [
        ".spec.trainer.numProcsPerNode",
        ".spec.podSpecOverrides",
    ]
    # without placement there is no patch at all
    bare = trainjob.manifest("n", "ml", "img:1", "s3://b/j.json", trainjob.Nodes(count=1, gpus=1))
    assert "runtimePatches" not in bare["spec"] and unknown_keys(tapi.TrainerV1alpha1TrainJob, bare) == []
    assert trainjob.name_for("run-1") == trainjob.name_for("run-1") != trainjob.name_for("run-2")
    assert len(trainjob.name_for("x" * 300)) <= 63


def test_conditions_decide_the_wait() -> None:
    running = {"metadata": {"name": "j"}, "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    assert trainjob.verdict({}) is None and trainjob.verdict(running) is None
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert trainjob.verdict(done) == "complete"
    failed = {"metadata": {"name": "j"}, "status": {"conditions": [
        {"type": "Complete", "status": "False"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "node-0 exited 1"},
    ]}}  # fmt: skip
    with pytest.raises(trainjob.TrainJobError, match="TrainJob j failed: BackoffLimitExceeded: node-0 exited 1"):
        trainjob.verdict(failed)


class _Cluster:
    """The four calls the launcher makes, on an in-memory table of TrainJobs that a test moves along
    (no Kubernetes API server can run on this machine)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def create_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        self.calls.append("create")
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = body | {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
        return body

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> dict:
        from kubernetes.client.exceptions import ApiException

        self.calls.append("get")
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[name]

    def delete_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str, **_: Any
    ) -> None:
        self.calls.append("delete")
        del self.jobs[name]


def test_a_retried_launcher_takes_over_its_run_s_trainjob_or_replaces_a_failed_one() -> None:
    api = _Cluster()
    first = trainjob.manifest("amnesia-unlearn-a", "ml", "img", "s3://b/a/job.json", NODES)
    assert trainjob.run(first, 60, 0.01, api) == "s3://b/a/job.json"
    assert api.calls == ["create", "get"]  # created without a status; the next read finds it complete
    retry = trainjob.manifest("amnesia-unlearn-a", "ml", "img", "s3://b/b/job.json", NODES)
    api.calls.clear()
    assert trainjob.run(retry, 60, 0.01, api) == "s3://b/a/job.json"  # the job that ran is the earlier one
    assert api.calls == ["create", "get"]
    api.jobs["amnesia-unlearn-a"]["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "X"}]}
    api.calls.clear()
    assert trainjob.run(retry, 60, 0.01, api) == "s3://b/b/job.json"
    assert api.calls == ["create", "get", "delete", "get", "create", "get"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_trainjob_command_runs_under_torchrun_as_the_torch_runtime_starts_it(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path
) -> None:
    """The manifest's command, word for word, with the PET_* variables the torch runtime sets on a node."""
    split = _split(store, demo_build, s3_prefix, n=1)
    cfg = UnlearnConfig(layers=[0, 1], batch_size=4, grad_accum=2, max_steps=3, eval_every=3, strategy="ddp")
    ctx = RunContext("tj", f"{s3_prefix}/runs/tj", store)
    job = write_job(cfg, ctx, as_model_config(str(tiny_model_dir)), split, None)
    command = trainjob.manifest("n", "ml", "img", job, trainjob.Nodes(count=1, gpus=2))["spec"]["trainer"]["command"]
    pet = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0"}
    pet |= {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port())}
    env = os.environ | pet | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_result(store, job)
    assert result is not None and result.steps == 3 and result.layers == [0, 1]
    assert "2 processes, ddp" in done.stderr  # rank 0 speaks; the world had two ranks
    assert store.verify(result.uri).digest == result.digest


def test_compiled_pipeline_with_the_trainjob_option_matches_golden_and_loads_back(tmp_path: Path) -> None:
    """After an intended change: AMNESIA_UPDATE_GOLDEN=1 pytest tests/test_trainjob.py -k golden"""
    cfg = tmp_path / "run.yaml"
    cluster = {"trainjob": {"nodes": 2, "gpus_per_node": 4}, "node_selector": {"gpu": "h100"}}
    cluster["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cfg.write_text(yaml.safe_dump({"cluster": cluster}))
    out = tmp_path / "pipeline.yaml"
    compile_against_golden(out, "pipeline-trainjob.yaml", "--config", str(cfg))

    assert components.load_component_from_file(str(out)).name == "selective-amnesia-unlearning"
    spec = next(yaml.safe_load_all(out.read_text()))
    launcher = spec["components"]["comp-unlearn-trainjob"]
    assert [p["field"] for p in launcher["taskConfigPassthroughs"]] == [
        "RESOURCES", "KUBERNETES_NODE_SELECTOR", "KUBERNETES_TOLERATIONS", "ENV"]  # fmt: skip
    executor = spec["deploymentSpec"]["executors"]["exec-unlearn-trainjob"]["container"]
    assert executor["resources"]["accelerator"]["resourceCount"] == "4"  # per node, passed to the TrainJob
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    constants = inner["unlearn-trainjob"]["inputs"]["parameters"]
    assert yaml.safe_load(constants["trainjob_json"]["runtimeValue"]["constant"])["nodes"] == 2
    assert "comp-unlearn" not in spec["components"]  # the in-pod unlearn is not in this DAG
