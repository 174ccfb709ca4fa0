"""The kustomize manifests: each overlay renders with a real kubectl and validates against the Kubernetes
schemas (strict: unknown fields fail), and holds what a cluster install needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _render(overlay: str, tmp_path: Path) -> tuple[Path, list[dict]]:  # type: ignore[type-arg]
    out = subprocess.run([BIN / "kubectl", "kustomize", ROOT / "manifests" / "overlays" / overlay],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(out.stdout)
    return path, [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("overlay", ["minio", "aws"])
def test_overlay_renders_and_validates(overlay: str, tmp_path: Path) -> None:
    path, docs = _render(overlay, tmp_path)
    check = subprocess.run([BIN / "kubernetes-validate", "--strict", path], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "amnesia"), ("ServiceAccount", "amnesia-runner"), ("Role", "amnesia-runner"),
            ("RoleBinding", "amnesia-runner"), ("Secret", "amnesia-s3"), ("Secret", "amnesia-mlflow"),
            ("StatefulSet", "postgres"), ("Deployment", "mlflow"), ("Job", "bucket-init"),
            ("ConfigMap", "kfp-launcher")} <= kinds  # fmt: skip
    assert (("StatefulSet", "minio") in kinds) == (overlay == "minio")
    assert all(d["metadata"].get("namespace", "amnesia") == "amnesia" for d in docs if d["kind"] != "Namespace")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    endpoint = by[("Secret", "amnesia-s3")]["stringData"]["AWS_ENDPOINT_URL_S3"]
    assert endpoint.startswith("http://minio." if overlay == "minio" else "https://s3.")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    mlflow = by[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["image"] == f"ghcr.io/selective-amnesia/amnesia:{version}"  # image tag = package version
    assert "postgresql+psycopg://" in mlflow["args"][0] and "--app-name basic-auth" in mlflow["args"][0]
    assert by[("ConfigMap", "kfp-launcher")]["data"]["defaultPipelineRoot"].startswith("s3://")


def test_bucket_init_is_idempotent(stack_state) -> None:  # type: ignore[no-untyped-def]
    args = [sys.executable, "-m", "amnesia.cli", "store", "init-bucket", "--bucket", "fresh-bucket"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.stdout.strip() == "bucket fresh-bucket: created", first.stderr
    assert again.stdout.strip() == "bucket fresh-bucket: already there"
