"""The Kubernetes side of a compiled pipeline: image, secrets as environment variables, GPUs and
resources on the compute stages, node selectors and tolerations (kfp-kubernetes)."""

from __future__ import annotations

from typing import Any

from kfp import kubernetes

from amnesia.runtime.cluster_config import ClusterConfig

# Secret keys, each exposed as the environment variable of the same name (amnesia.core.settings reads them).
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
REVIEW_KEYS = ("AMNESIA_REVIEW_WEBHOOKS", "AMNESIA_REVIEW_WEBHOOK_SECRET", "AMNESIA_REVIEW_URL")  # governance.notify


def apply_cluster(task: Any, cfg: ClusterConfig, compute: bool, notify: bool = False) -> Any:
    if cfg.image:
        task.set_container_image(cfg.image)
        task.set_env_variable("AMNESIA_IMAGE_REF", cfg.image)  # lineage and registry record the image
    kubernetes.use_secret_as_env(task, cfg.s3_secret, {key: key for key in S3_KEYS})
    kubernetes.use_secret_as_env(task, cfg.mlflow_secret, {key: key for key in MLFLOW_KEYS})
    task.set_env_variable("AMNESIA_KEYSTORE", cfg.keystore)  # the runs' data keys (amnesia.storage.sealing)
    if notify:  # the register step tells the reviewers' webhooks, when that Secret exists
        kubernetes.use_secret_as_env(task, cfg.review_secret, {key: key for key in REVIEW_KEYS}, optional=True)
    if compute:
        task.set_cpu_request(cfg.cpu).set_memory_request(cfg.memory).set_memory_limit(cfg.memory)
        if cfg.accelerator and cfg.gpus:
            task.set_accelerator_type(cfg.accelerator).set_accelerator_limit(cfg.gpus)
        for key, value in cfg.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in cfg.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    return task
