"""The candidate folder is also an MLflow model: `mlflow.pyfunc.load_model("models:/NAME@champion")` and
`mlflow.transformers.load_model(...)` work on a registered version, as MLflow's users expect.

The MLmodel file (transformers flavor, text-generation, plus the python_function flavor) sits beside the
weights and points at them (`model_binary: "."`), so the weights are stored once; the tokenizer is also
written under components/tokenizer, where the flavor looks for it (a few MB). Requirements name the
versions that wrote the folder.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

COMPONENTS = Path("components") / "tokenizer"


def write(folder: Path, model: Any, tokenizer: Any, source: str) -> None:
    """MLmodel, requirements.txt and python_env.yaml for the model folder (weights already saved there)."""
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
    mlmodel = Model()
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
