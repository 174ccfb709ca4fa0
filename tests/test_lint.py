"""Lint is part of the suite, so CI enforces it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean() -> None:
    dirs = [d for d in ("amnesia", "components", "pipelines", "tests", "bench") if (ROOT / d).is_dir()]
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", *dirs], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
