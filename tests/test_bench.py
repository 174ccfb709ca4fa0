"""The benchmarks run (smallest size): they are measured by hand, but must not rot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_trace_bench_runs_and_methods_agree() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trace.py"), "--facts", "1", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "speed-up:" in out.stdout and "max |score difference|" in out.stdout
