"""What `amnesia run` ends with when a run did not finish (Ctrl-C, a killed process): where it stopped,
what it finished and where that lies; never 'running? (stopped at: ?)'."""

from __future__ import annotations

import subprocess
import sys
import uuid

from amnesia.core.settings import Settings
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.runtime.summary import summarize
from amnesia.storage.lineage import Lineage


def test_an_interrupted_run_says_where_it_stopped(stack_settings: Settings) -> None:
    run_id = f"cut-{uuid.uuid4().hex[:8]}"
    cfg = PipelineConfig.model_validate(
        {"model": "/m", "split": {"forget": "f.jsonl", "retain": "r.jsonl"}, "experiment": "summary-tests",
         "store": {"root": "s3://amnesia"}}
    )  # fmt: skip
    lin = Lineage(run_id, experiment=cfg.experiment, settings=stack_settings)
    with lin.stage("split"):
        pass
    killed_in_trace = f"""
import os, signal
from amnesia.core.settings import load_settings
from amnesia.storage.lineage import Lineage
lin = Lineage({run_id!r}, experiment={cfg.experiment!r}, settings=load_settings())
with lin.stage("trace"):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", killed_in_trace], timeout=120).returncode == -9
    lines = summarize(cfg, stack_settings, run_id)
    assert lines[0] == "status  interrupted at trace: the run did not finish"
    assert lines[1] == f"        finished: split; what they stored is under s3://amnesia/runs/{run_id}"
    assert f"--run-id {run_id}" in lines[2]
    assert not any("running?" in line or "stopped at: ?" in line for line in lines)
