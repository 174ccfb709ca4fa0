"""What a person sees while kfp.local runs the DAG: a line per stage as it starts and ends, the stages'
progress lines (step, rate, ETA) and their one-line errors. Everything else kfp.local prints (executor
JSON, task outputs, library warnings) goes to one log file per task, named at the end; `verbose` shows
it all as before.

kfp.local prints a task's output with `print` and logs through a handler on sys.stdout made when the
run starts, so standing in for sys.stdout and sys.stderr while it runs sees every line.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '?([\w.\-]+)'?")
_END = re.compile(r"Task '?([\w.\-]+)'? finished with status (\w+)")
# Lines of the stages' own that a person wants live: progress (with an ETA) and one-line failures.
_SHOWN = re.compile(r", ETA |, ended after |^\s*ERROR \S+: ")
# A retried (or repeated) task that reused stored work: its end line says so (the figures are not new).
_REUSED = re.compile(r"reused the stored result|resumed from the checkpoint at step (\d+)")
_WORDS = {"SUCCESS": "succeeded", "FAILURE": "FAILED", "CANCELED": "cancelled"}


class TaskConsole(io.TextIOBase):
    def __init__(self, terminal: TextIO, folder: Path, verbose: bool = False) -> None:
        self.terminal, self.folder, self.verbose = terminal, folder, verbose
        folder.mkdir(parents=True, exist_ok=True)
        self.task = "pipeline"
        self.files: dict[str, TextIO] = {}
        self.started: dict[str, float] = {}
        self.reused: dict[str, str] = {}
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        for f in self.files.values():
            f.flush()

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        for f in self.files.values():
            f.close()
        self.files.clear()

    def log_file(self, task: str) -> Path:
        return self.folder / f"{task}.log"

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        start, end = _START.search(plain), _END.search(plain)
        if start:
            self.task = start.group(1)
            self.started[self.task] = time.monotonic()
            self._show(f"stage   {self.task:<20} started")
        self._file(self.task).write(plain + "\n")
        if reused := _REUSED.search(plain):
            step = reused.group(1)
            self.reused[self.task] = f"resumed from step {step}" if step else "reused a stored result"
        if end:
            task, status = end.group(1), _WORDS.get(end.group(2), end.group(2).lower())
            took = time.monotonic() - self.started.get(task, time.monotonic())
            note = f", {self.reused.pop(task)}" if task in self.reused else ""
            self._show(f"stage   {task:<20} {status} in {took:.0f}s{note} (log: {self.log_file(task)})")
            self.task = "pipeline"
        elif self.verbose:
            self.terminal.write(line + "\n")
        elif _SHOWN.search(plain):
            shown = plain.strip()
            if "ERROR" not in shown:  # "12:34:56 amnesia.stages.unlearn: unlearning: step …" → "unlearning: step …"
                shown = "        " + shown.split(": ", 1)[-1]
            self._show(shown)

    def _show(self, text: str) -> None:
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def _file(self, task: str) -> TextIO:
        if task not in self.files:
            self.files[task] = open(self.log_file(task), "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        return self.files[task]


@contextlib.contextmanager
def task_console(folder: Path, verbose: bool = False) -> Iterator[TaskConsole]:
    """sys.stdout and sys.stderr replaced by a TaskConsole writing to the real stdout."""
    console = TaskConsole(sys.stdout, folder, verbose)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = console  # type: ignore[assignment]
    try:
        yield console
    finally:
        sys.stdout, sys.stderr = saved
        console.close()
