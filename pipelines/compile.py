"""Compile the pipeline for a cluster: the YAML a KFP server runs (`amnesia compile`)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from amnesia.runtime.cluster_config import ClusterConfig
from pipelines.unlearning import build


def compile_pipeline(cluster: ClusterConfig, out: Path, run_id_from_job: bool = False) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(cluster, run_id_from_job), str(out))
    return out
