"""The candidate folder as an MLflow model: MLflow's own loaders read it, pointing at the weights the
project saved (no second copy), and generate."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from amnesia.science.generation import greedy_generate
from amnesia.storage import mlmodel
from amnesia.storage.models import load_model


def test_mlflow_loads_the_folder_as_pyfunc_and_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc
    import mlflow.transformers

    folder = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, folder)
    ours = load_model(str(folder))
    mlmodel.write(folder, ours.model, ours.tokenizer, "s3://bucket/base")
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = spec["flavors"]["transformers"]
    assert flavor["model_binary"] == "." and flavor["pipeline_model_type"] == type(ours.model).__name__
    assert spec["flavors"]["python_function"]["loader_module"] == "mlflow.transformers"
    assert len(list(folder.rglob("*.safetensors"))) == 1  # the weights once
    assert "transformers==" in (folder / "requirements.txt").read_text()

    prompt = "Ada was born in"
    expected = greedy_generate(ours.model, ours.tokenizer, [prompt], max_new_tokens=6)[0]
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    out = pyfunc.predict([prompt], params={"max_new_tokens": 6, "do_sample": False})
    assert out[0].startswith(prompt) and len(out[0]) > len(prompt)
    pipe = mlflow.transformers.load_model(str(folder))
    same = pipe(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert same.removeprefix(prompt).strip() == expected.strip()  # the same weights, the same greedy text
