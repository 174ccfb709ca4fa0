"""examples/: the documented run config for "my own model and data" runs the whole pipeline as given,
from another working directory (its relative paths resolve against the file), on a local model folder
and SemEval-style forget / retain files.

What this machine needs differs from a user's: no hub (MMLU comes from the demo world's utility set, in
the cais/mmlu layout), and the model is the 6-layer demo model (trace window 2, answers under 64 tokens).
Those keys, and only those, are changed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from amnesia.demo.prepare import DemoArtifacts
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join

ROOT = Path(__file__).resolve().parent.parent


def _first(store: ArtifactStore, uri: str, n: int) -> bytes:
    return b"".join(line + b"\n" for line in store.get_bytes(uri).splitlines()[:n])


def test_own_model_example_runs_end_to_end(
    demo_build: DemoArtifacts, store: ArtifactStore, tmp_path: Path
) -> None:  # fmt: skip
    example = tmp_path / "own-model"
    shutil.copytree(ROOT / "examples" / "own-model", example)
    shutil.copytree(store.fetch_dir(demo_build.model_uri, tmp_path / "cache"), example / "model")
    (example / "data").mkdir()
    (example / "data" / "forget.jsonl").write_bytes(_first(store, join(demo_build.world_uri, "forget.jsonl"), 16))
    (example / "data" / "retain.jsonl").write_bytes(_first(store, join(demo_build.world_uri, "retain.jsonl"), 64))
    cfg = yaml.safe_load((example / "run.yaml").read_text())
    cfg["model_name"] = "example-own-model"
    cfg["trace"] |= {"window": 2, "max_facts": 8, "samples": 4}
    cfg["evaluate"]["max_new_tokens"] = 64
    cfg["evaluate"]["mmlu"] |= {"uri": join(demo_build.world_uri, "utility"), "shots": 0, "format": "letter"}
    (example / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", "run", "--config", str(example / "run.yaml"), "--run-id", "example-1"],
        cwd=elsewhere, capture_output=True, text=True, timeout=1500, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "status  succeeded (stopped at: end)" in run.stdout, run.stdout
    gate = next(line for line in run.stdout.splitlines() if line.startswith("gate    "))
    assert gate.startswith(("gate    PASS", "gate    FAIL: ")), gate  # a verdict, with reasons when it fails


def test_the_example_header_commands_exist_as_written() -> None:
    """Every `amnesia …` line in the example's header names a command and options the CLI has (one once
    said `approve --reviewer`, an option that was gone)."""
    import re
    import shlex

    header = [line for line in (ROOT / "examples" / "own-model" / "run.yaml").read_text().splitlines()
              if line.startswith("#")]  # fmt: skip
    commands = [c.strip() for line in header for c in re.findall(r"amnesia ([a-z][^;#$)]*)", line)]
    assert any(c.startswith("approve ") for c in commands), commands
    for command in commands:
        words = shlex.split(command)
        path = [w for w in words[:3] if not w.startswith("-")][: 2 if words[0] in ("stack", "requests") else 1]
        if words[0] == "stack" and len(words) > 2 and words[1] == "user":
            path = words[:3]
        out = subprocess.run([sys.executable, "-m", "amnesia.cli", *path, "--help"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode == 0, (command, out.stderr)
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in out.stdout, (command, option)
