"""Model loading: local folders and s3:// (verified, cached by digest); safetensors only; no remote code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.models import ModelLoadError, load_model


def test_loads_a_local_folder(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    assert loaded.model.config.model_type == "olmo" and loaded.model.config.num_hidden_layers == 2
    assert loaded.tokenizer.pad_token_id is not None and not loaded.model.training
    assert loaded.digest is None  # a plain folder has no manifest; an s3 folder does


def test_loads_from_s3_cached_by_digest(
    tiny_model_dir: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    ref = store.put_dir(tiny_model_dir, s3_prefix)
    first = load_model(s3_prefix, cache_root=tmp_path / "cache")
    assert first.digest == ref.digest and first.path == tmp_path / "cache" / ref.digest
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    second = load_model(s3_prefix, cache_root=tmp_path / "cache")
    assert (second.path / "model.safetensors").stat().st_mtime_ns == stamp  # no second download
    a = first.model.state_dict()
    assert all((a[k] == v).all() for k, v in second.model.state_dict().items())


def test_pickle_only_folder_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"holds only pickle weights \(pytorch_model\.bin\).*safetensors"):
        load_model(str(folder))


def test_folders_without_weights_or_config_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights found"):
        load_model(str(no_weights))
    (no_weights / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(no_weights))
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(str(tmp_path / "absent"))
    no_tokenizer = tmp_path / "no-tokenizer"  # weights alone once loaded and failed late, in evaluate
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    with pytest.raises(ModelLoadError, match=r"no-tokenizer: no tokenizer \(tokenizer.json / tokenizer_config.json\)"):
        load_model(str(no_tokenizer))


def test_custom_code_is_not_run_by_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "model_type": "mystery",
        "auto_map": {"AutoConfig": "configuration_m.MConfig", "AutoModelForCausalLM": "modeling_m.MModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_m.py").write_text("raise SystemExit('remote code ran')\n")
    named = r"\(mystery\) is the model's own code .*set model\.trust_remote_code: true"
    with pytest.raises(ModelLoadError, match=named):
        load_model(str(folder))  # named by its setting, not "Transformers out of date"
    from amnesia.core.config import ModelConfig

    assert "trust_remote_code" in ModelConfig.model_fields  # the field the message names exists


def test_hub_id_offline_is_a_clear_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1: the same path a hub id takes on a machine without the hub.
    with pytest.raises(ModelLoadError, match="someorg/tiny-llm: could not load the model.*needs network access"):
        load_model("someorg/tiny-llm")
