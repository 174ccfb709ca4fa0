"""No telemetry: importing amnesia turns MLflow's off (over a user's `false`), the stack's servers run with it
off, and the image and the cluster's MLflow say so too.

MLflow also turns its telemetry off by itself under pytest or CI (it reads PYTEST_CURRENT_TEST, CI, ...), so
a check inside this process would pass whatever the project does. The checks run in a subprocess whose
environment has none of those, and a control run without `import amnesia` shows telemetry on there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

from amnesia.core.privacy import NO_TELEMETRY
from amnesia.devstack import stack

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, os, threading
{prelude}
import mlflow
from mlflow.telemetry.utils import is_telemetry_disabled
client = mlflow.MlflowClient(tracking_uri="sqlite:///{tracking}")
client.search_experiments()
names = [t.name for t in threading.enumerate()]
print(json.dumps({{"disabled": is_telemetry_disabled(), "threads": names,
                  "env": {{k: os.environ.get(k) for k in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}}}}))
"""
_CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TRAVIS",
               "CIRCLECI", "CODEBUILD_BUILD_ID", "TF_BUILD", "BITBUCKET_BUILD_NUMBER")  # fmt: skip


def _probe(tmp_path: Path, prelude: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CI_MARKERS and k not in NO_TELEMETRY}
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"  # a user's setting that would turn it on: amnesia overrides it
    code = PROBE.format(prelude=prelude, tracking=tmp_path / "mlflow.db")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_amnesia_turns_mlflow_telemetry_off(tmp_path: Path) -> None:
    control = _probe(tmp_path, "")
    assert control["disabled"] is False, "the probe's environment still turns telemetry off by itself"
    found = _probe(tmp_path, "import amnesia")
    assert found["disabled"] is True
    assert found["env"] == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    assert not [n for n in found["threads"] if "Telemetry" in n], found["threads"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_every_server_of_the_stack_runs_with_telemetry_off(stack_state: stack.StackState) -> None:
    services = [stack_state.mlflow, stack_state.s3, stack_state.review, stack_state.audit]
    for service in [s for s in services if s is not None]:
        env = _environ(service.pid)
        found = {k: env.get(k) for k in NO_TELEMETRY}
        assert found == NO_TELEMETRY, (service.name, found)


def test_the_image_and_the_cluster_mlflow_turn_it_off() -> None:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    image_env = parser.envs
    assert all(image_env.get(k) == v for k, v in NO_TELEMETRY.items()), image_env
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "base" / "mlflow.yaml").read_text()))
    server = next(d for d in docs if d and d.get("kind") == "Deployment")
    container = server["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true" and env.get("DO_NOT_TRACK") == "true"
