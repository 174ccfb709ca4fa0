"""The candidate folder is also an MLflow model: `mlflow.pyfunc.load_model("models:/NAME@champion")` and
`mlflow.transformers.load_model(...)` work on a registered version, as MLflow's users expect.

The MLmodel file (transformers flavor, text-generation, plus the python_function flavor) sits beside the
weights and points at them (`model_binary: "."`), so the weights are stored once; the tokenizer is also
written under components/tokenizer, where the flavor looks for it (a few MB). Requirements name the
versions that wrote the folder. The folder's digest is the candidate's identity, so the MLmodel holds no
wall clock and no random id: its model_uuid derives from what the caller says made the model, and its
creation time is fixed (the registered version and the lineage record when).
"""

from __future__ import annotations

import platform
import uuid
from pathlib import Path
from typing import Any

COMPONENTS = Path("components") / "tokenizer"
NO_CLOCK = "1970-01-01 00:00:00"  # the same inputs must give the same bytes (and digest)


def write(folder: Path, model: Any, tokenizer: Any, source: str, identity: str = "") -> None:
    """MLmodel, requirements.txt and python_env.yaml for the model folder (weights already saved there).
    identity: what made the model (the unlearn stage's summary digest); the model_uuid derives from it."""
    import mlflow
    import mlflow.pyfunc
    import torch
    import transformers
    from mlflow.models import Model

    tokenizer.save_pretrained(folder / COMPONENTS)
    pins = [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}"]
    pins.append(f"torch=={torch.__version__.split('+')[0]}")
    (folder / "requirements.txt").write_text("\n".join(pins) + "\n")
    env = f"python: {platform.python_version()}\nbuild_dependencies:\n- pip\ndependencies:\n- -r requirements.txt\n"
    (folder / "python_env.yaml").write_text(env)
    mlmodel = Model(utc_time_created=NO_CLOCK, model_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{identity}").hex)
    mlflow.pyfunc.add_to_model(mlmodel, loader_module="mlflow.transformers", python_env="python_env.yaml")
    mlmodel.add_flavor(
        "transformers",
        task="text-generation",
        instance_type="TextGenerationPipeline",
        pipeline_model_type=type(model).__name__,
        source_model_name=source,
        model_binary=".",  # the weights beside this file: no second copy
        components=["tokenizer"],
        tokenizer_type=type(tokenizer).__name__,
        tokenizer_name=source,
        transformers_version=transformers.__version__,
        torch_dtype=str(model.dtype),
    )
    mlmodel.save(str(folder / "MLmodel"))
