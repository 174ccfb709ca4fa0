"""What a KFP component hands to the next one: a small JSON result, and an output artifact whose
metadata names the stored folder (URI + digest). Duck-typed on KFP's artifact (no kfp import here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel


def describe(artifact: Any, result: BaseModel, uri: str, digest: str) -> str:
    """Fill a KFP output artifact: metadata = where and what; its file = the stage's result JSON."""
    payload = result.model_dump_json()
    artifact.metadata.update({"store_uri": uri, "digest": digest})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(payload)
    return payload
