"""Layer 8 — the `amnesia` command: its own package, one module per command group (as ZenML's cli/). Every
command is a thin click wrapper over the library; `base` holds the root group the modules add to.

May import everything, including the pipelines (kfp) and the local stack: the only layer that does.
"""

from __future__ import annotations

import os

from amnesia.cli import audit, decisions, demo, pipeline, requests, stack, stages, store  # noqa: F401  (each adds its commands to the root group)
from amnesia.cli.base import cli


def main() -> None:
    import logging

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow imports GitPython
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("amnesia").addHandler(handler)
    logging.getLogger("amnesia").setLevel(logging.INFO)
    cli(prog_name="amnesia")


__all__ = ["cli", "main"]
