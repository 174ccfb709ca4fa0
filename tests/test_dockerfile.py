"""The Dockerfile cannot be built here (no Docker engine), so check what can be checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def _args() -> dict[str, str]:
    """ARG NAME=default, as a dict."""
    items = [i["value"] for i in _parser().structure if i["instruction"] == "ARG"]
    return dict(v.split("=", 1) for v in items if "=" in v)


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_image_tag_is_the_package_version() -> None:
    args = _args()
    assert args["VERSION"] == _version()
    makefile = (ROOT / "Makefile").read_text()
    assert "-t $(IMAGE):$(VERSION)" in makefile and "--build-arg VERSION=$(VERSION)" in makefile
    from components import IMAGE

    assert IMAGE.endswith(f":{_version()}")


def test_torch_pin_matches_the_cpu_path() -> None:
    args = _args()
    cpu_pin = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert cpu_pin and args["TORCH_VERSION"] == cpu_pin.group(1)


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [i["value"].strip() for i in _parser().structure if i["instruction"] == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0


def test_copies_what_exists_and_installs_the_package() -> None:
    structure = _parser().structure
    for item in structure:
        if item["instruction"] == "COPY":
            *sources, _dest = item["value"].split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    runs = " ".join(i["value"] for i in structure if i["instruction"] == "RUN")
    # The package with its `server` extra: the same image runs the cluster's MLflow server.
    assert 'pip install "./[server]"' in runs and "import amnesia, components, pipelines, psycopg" in runs
    # The local object store (the `weed` binary, ~150 MB) stays out: a cluster runs SeaweedFS's own image.
    assert "[local" not in runs and "seaweedfs" not in runs.lower()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".amnesia", ".git"} <= set(ignored)


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
