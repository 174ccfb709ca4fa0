"""Where and how the pipeline's tasks run on a cluster (compiled YAML): image, GPUs, secrets, a TrainJob."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amnesia.core.config import StrictModel


class Toleration(StrictModel):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class TrainJobConfig(StrictModel):
    """Run the unlearn step as a Kubeflow Trainer TrainJob (torch runtime): nodes × GPUs processes."""

    nodes: int = Field(1, ge=1, le=64, description="Training nodes (pods).")
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs, and so processes, per node.")
    runtime: str = Field("torch-distributed", description="The ClusterTrainingRuntime to run on.")
    timeout_s: int = Field(6 * 3600, ge=60, description="How long the launcher waits for the TrainJob.")
    poll_s: float = Field(20.0, gt=0, le=600)
    service_account: str = Field(
        "amnesia-runner", description="The training pods' identity: it reads the runs' data keys (storage.sealing)."
    )


class ClusterConfig(StrictModel):
    """What compiled YAML carries for a Kubernetes cluster (ignored by local runs)."""

    image: str | None = Field(None, description="REPO:TAG for every component (default: the package version).")
    s3_secret: str = Field(
        "amnesia-s3", description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3."
    )
    mlflow_secret: str = Field("amnesia-mlflow", description="Secret with MLFLOW_TRACKING_URI (+ username/password).")
    review_secret: str = Field(
        "amnesia-review-notify",
        description="Optional Secret the register step reads: AMNESIA_REVIEW_WEBHOOKS, _WEBHOOK_SECRET, _URL.",
    )
    keystore: str = Field(
        "k8s:amnesia/amnesia-data-keys",
        pattern=r"^(k8s:[a-z0-9\-]+/[a-z0-9.\-]+|file:/.+)$",
        description="Where the runs' data keys live (AMNESIA_KEYSTORE): a Secret the runner may get and patch.",
    )
    accelerator: str | None = Field(
        None, description="GPU resource for trace, unlearn and evaluate, e.g. nvidia.com/gpu; None: CPU only."
    )
    gpus: int = Field(1, ge=0, le=16, description="GPUs per compute task when an accelerator is set.")
    cpu: str = "4"
    memory: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    search_parallel: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Given: the settings search (unlearn.search) fans out, each trial its own compute task, this "
        "many at a time (a dsl.ParallelFor, two rounds); None: its trials run one after another in the unlearn task.",
    )
    trainjob: TrainJobConfig | None = Field(
        None,
        description="Given: unlearn runs as a TrainJob (several nodes/GPUs) started and awaited by a light "
        "launcher task; the resources, node selector and tolerations above then apply to the TrainJob's nodes.",
    )
