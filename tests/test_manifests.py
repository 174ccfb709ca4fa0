"""The kustomize manifests: each overlay renders with a real kubectl and validates against the Kubernetes
schemas (strict: unknown fields fail), and holds what a cluster install needs."""

from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize("overlay", ["seaweedfs", "aws"])
def test_overlay_renders_and_validates(overlay: str, tmp_path: Path) -> None:
    path, docs = _render(overlay, tmp_path)
    check = subprocess.run([BIN / "kubernetes-validate", "--strict", path], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "amnesia"), ("ServiceAccount", "amnesia-runner"), ("Role", "amnesia-runner"),
            ("RoleBinding", "amnesia-runner"), ("Secret", "amnesia-s3"), ("Secret", "amnesia-mlflow"),
            ("StatefulSet", "postgres"), ("Deployment", "mlflow"), ("Job", "bucket-init"),
            ("ConfigMap", "kfp-launcher")} <= kinds  # fmt: skip
    assert (("StatefulSet", "seaweedfs") in kinds) == (overlay == "seaweedfs")
    assert "minio" not in path.read_text().lower()
    assert all(d["metadata"].get("namespace", "amnesia") == "amnesia" for d in docs if d["kind"] != "Namespace")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    page = by[("Deployment", "review")]["spec"]["template"]["spec"]  # the reviewers' page, behind MLflow's auth
    command = page["containers"][0]["command"]
    assert command[:2] == ["amnesia", "serve"] and "--secure-cookies" in command and ("Service", "review") in by
    assert page["serviceAccountName"] == "amnesia-review"
    assert {"secretRef": {"name": "amnesia-review"}} in page["containers"][0]["envFrom"]  # an MLflow admin, its key
    mlflow_env = {e["name"] for e in by[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in mlflow_env  # the basic-auth app refuses to start without it
    endpoint = by[("Secret", "amnesia-s3")]["stringData"]["AWS_ENDPOINT_URL_S3"]
    assert endpoint.startswith("http://seaweedfs." if overlay == "seaweedfs" else "https://s3.")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    mlflow = by[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["image"] == f"ghcr.io/selective-amnesia/amnesia:{version}"  # image tag = package version
    assert "postgresql+psycopg://" in mlflow["args"][0] and "--app-name basic-auth" in mlflow["args"][0]
    assert by[("ConfigMap", "kfp-launcher")]["data"]["defaultPipelineRoot"].startswith("s3://")
    # The runs' data keys: an empty Secret the runner may read and patch (amnesia.storage.sealing), nothing broader.
    assert by[("Secret", "amnesia-data-keys")]["data"] == {}
    rules = by[("Role", "amnesia-runner")]["rules"]
    keys = [r for r in rules if "amnesia-data-keys" in r.get("resourceNames", [])]
    assert keys == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["amnesia-data-keys"],
                     "verbs": ["get", "patch"]}]  # fmt: skip


def test_bucket_init_is_idempotent(stack_state) -> None:  # type: ignore[no-untyped-def]
    args = [sys.executable, "-m", "amnesia.cli", "store", "init-bucket", "--bucket", "fresh-bucket"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.stdout.strip() == "bucket fresh-bucket: created", first.stderr
    assert again.stdout.strip() == "bucket fresh-bucket: already there"


def test_seaweedfs_overlay_wires_identities_and_access_log(tmp_path: Path) -> None:
    _, docs = _render("seaweedfs", tmp_path)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = by[("StatefulSet", "seaweedfs")]["spec"]["template"]["spec"]
    init = {c["name"]: c for c in pod["initContainers"]}
    weed = pod["containers"][0]
    # Identities come from the pipeline's own Secret through the local stack's code; SeaweedFS reads them.
    assert init["identities"]["command"][:3] == ["amnesia", "store", "s3-identities"]
    assert {"secretRef": {"name": "amnesia-s3"}} in init["identities"]["envFrom"]
    assert "-s3.config=/config/s3.json" in weed["args"] and "-s3.autoCreateBucket=false" in weed["args"]
    assert weed["image"].startswith("chrislusf/seaweedfs:") and not weed["image"].endswith(":latest")
    # The access log: SeaweedFS -> the sidecar receiver (started first, kept running) -> its own volume.
    audit_cfg = json.loads(by[("ConfigMap", "seaweedfs-audit")]["data"]["audit.json"])
    sidecar = init["s3-audit"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"][:3] == ["python", "-m", "amnesia.storage.access_log"]
    assert sidecar["command"][sidecar["command"].index("--port") + 1] == str(audit_cfg["fluent_port"])
    assert "-s3.auditLogConfig=/etc/seaweedfs/audit.json" in weed["args"]
    claims = {c["metadata"]["name"] for c in by[("StatefulSet", "seaweedfs")]["spec"]["volumeClaimTemplates"]}
    assert claims == {"data", "audit"}
    launcher = yaml.safe_load(by[("ConfigMap", "kfp-launcher")]["data"]["providers"])
    assert launcher["s3"]["default"]["endpoint"] == "seaweedfs.amnesia.svc.cluster.local:8333"


def test_cluster_identities_are_accepted_by_a_real_seaweedfs(tmp_path: Path) -> None:
    """`amnesia store s3-identities` (the init container) writes a file SeaweedFS signs requests against."""
    from amnesia.core.settings import load_settings
    from amnesia.devstack import stack
    from amnesia.storage.artifacts import ArtifactStore

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMNESIA_"))}
    out = tmp_path / "s3" / "identities.json"
    cmd = [sys.executable, "-m", "amnesia.cli", "store", "s3-identities", "--out", str(out)]
    refused = subprocess.run(cmd, env=env | {"AWS_ACCESS_KEY_ID": "CHANGE-ME", "AWS_SECRET_ACCESS_KEY": "x"},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "real values, not CHANGE-ME" in refused.stderr
    keys = {
        "AWS_ACCESS_KEY_ID": "AKCLUSTER",
        "AWS_SECRET_ACCESS_KEY": "cluster-secret",
        "AMNESIA_AUDITOR_ACCESS_KEY_ID": "AKAUDIT",
        "AMNESIA_AUDITOR_SECRET_ACCESS_KEY": "audit-secret",
    }
    made = subprocess.run(cmd, env=env | keys, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and "identities amnesia, auditor" in made.stdout, made.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    svc, ids = stack.start_s3(tmp_path / "s3", stack.free_port_pair(), ["amnesia"])
    try:
        assert ids.admin.access_key_id == "AKCLUSTER"
        endpoint, secret = f"http://127.0.0.1:{svc.port}", "cluster-secret"
        store = ArtifactStore(
            load_settings(
                s3_endpoint_url=endpoint, aws_access_key_id=ids.admin.access_key_id, aws_secret_access_key=secret
            )
        )
        store.put_json({"ok": True}, "s3://amnesia/x.json")
        assert store.get_json("s3://amnesia/x.json") == {"ok": True}
    finally:
        stack.stop(svc)
