"""kfp.local's output, as the terminal shows it: a line per stage, progress and errors; the rest to logs."""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.console import TaskConsole

KFP = """\x1b[0m12:00:01.000 - INFO - Executing task \x1b[96m'split'\x1b[0m
12:00:01.001 - INFO - Streamed logs:

    {"executorOutput": {"parameterValues": {"Output": "..."}}}
    /venv/lib/python3.11/site-packages/x.py:3: FutureWarning: something
    12:00:02 amnesia.stages.split.stage: split: 16 forget records
    12:00:03 amnesia.stages.unlearn: unlearning: step 3/3 (100%), 2.1 step/s, ETA 0s; forget_loss -3.1
    ERROR split: corpus.jsonl: line 1: field 'input': missing
12:00:04.000 - INFO - Task \x1b[96m'split'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
"""


def test_the_terminal_gets_stages_progress_and_errors_and_the_logs_get_everything(tmp_path: Path) -> None:
    terminal = io.StringIO()
    console = TaskConsole(terminal, tmp_path / "logs")
    for chunk in (KFP[:37], KFP[37:200], KFP[200:]):  # written in arbitrary pieces, as streams are
        console.write(chunk)
    console.close()
    shown = terminal.getvalue().splitlines()
    assert shown[0] == "stage   split                started"
    assert shown[1] == "        unlearning: step 3/3 (100%), 2.1 step/s, ETA 0s; forget_loss -3.1"
    assert shown[2] == "ERROR split: corpus.jsonl: line 1: field 'input': missing"
    assert shown[3].startswith("stage   split                succeeded in ") and "split.log" in shown[3]
    assert len(shown) == 4  # no executor JSON, no warnings, no ordinary log lines
    log = (tmp_path / "logs" / "split.log").read_text()
    assert "executorOutput" in log and "FutureWarning" in log and "\x1b[" not in log

    verbose = io.StringIO()
    everything = TaskConsole(verbose, tmp_path / "v", verbose=True)
    everything.write(KFP)
    everything.close()
    assert "executorOutput" in verbose.getvalue()


def test_a_task_that_reused_stored_work_says_so(tmp_path: Path) -> None:
    """A retried evaluate that found its stored result, a retried unlearn that resumed: not new figures."""
    lines = [
        "12:00:01.000 - INFO - Executing task 'evaluate-base'",
        "    12:00:02 amnesia.stages.evaluate.stage: evaluate base: reused the stored result s3://b/cache/k",
        "12:00:03.000 - INFO - Task 'evaluate-base' finished with status SUCCESS",
        "12:00:04.000 - INFO - Executing task 'unlearn'",
        "    12:00:05 amnesia.stages.unlearn.trainer: unlearn: resumed from the checkpoint at step 40",
        "12:00:06.000 - INFO - Task 'unlearn' finished with status SUCCESS",
        "12:00:07.000 - INFO - Executing task 'gate'",
        "12:00:08.000 - INFO - Task 'gate' finished with status SUCCESS",
    ]
    terminal = io.StringIO()
    console = TaskConsole(terminal, tmp_path / "logs")
    console.write("\n".join(lines) + "\n")
    console.close()
    ends = [line for line in terminal.getvalue().splitlines() if "succeeded" in line]
    assert ", reused a stored result (log: " in ends[0]
    assert ", resumed from step 40 (log: " in ends[1]
    assert ends[2].split(" (log: ")[0].endswith("s") and "reused a" not in ends[2] and "resumed from" not in ends[2]
