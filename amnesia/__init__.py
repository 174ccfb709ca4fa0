"""Selective Amnesia: compliance unlearning for LLMs, in layers; each imports only from the layers below it.

    core → science → storage → results → stages → governance → runtime → devstack | demo → cli

The rule is checked by import-linter (pyproject.toml) and tests/test_architecture.py; kfp, click and the
pipelines are imported by the CLI alone. `components/` and `pipelines/` sit on top, outside this package.
"""

from importlib.metadata import PackageNotFoundError, version

from amnesia.core.numerics import pin_cpu_numerics
from amnesia.core.privacy import disable_telemetry

disable_telemetry()  # before anything imports MLflow: no process of ours reports usage anywhere
pin_cpu_numerics()  # before anything imports torch: the same inputs give the same weights on any x86 CPU

try:
    __version__ = version("selective-amnesia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "disable_telemetry"]
