"""No telemetry from any process of a tool that handles personal data.

MLflow 3's client starts a telemetry thread by default; it also set and unset a variable in `os.environ`
while `requests` iterated it, which crashed an 18-minute evaluation with a KeyError. Importing `amnesia`
turns it off, before MLflow is imported; the local stack's servers get the same variables, and so do the
image (Dockerfile) and the cluster's MLflow (manifests).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

NO_TELEMETRY = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3
    "DO_NOT_TRACK": "true",  # the cross-tool convention (MLflow reads it too)
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub (no hub is used, but never report if one is)
}


def disable_telemetry(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Set the variables that turn telemetry off (overriding a value that would turn it on)."""
    env.update(NO_TELEMETRY)
    return env
