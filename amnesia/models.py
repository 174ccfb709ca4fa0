"""Model and tokenizer loading: a local folder, an s3:// model folder (verified, cached by digest), or
a hub id when online. Weights load as safetensors only, and `trust_remote_code` is off unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amnesia.errors import AmnesiaError

_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelLoadError(AmnesiaError):
    """A model folder or id could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # what the user gave
    path: Path | None  # the local folder it was read from (None for a hub id)
    digest: str | None  # the folder's manifest digest (s3, or a folder that has a manifest)


def check_weights(folder: Path) -> None:
    """Refuse a folder without safetensors weights, naming what it holds instead."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a model folder")
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pat in _PICKLE_WEIGHTS for p in folder.glob(pat))
    if pickles:
        raise ModelLoadError(
            f"{folder}: holds only pickle weights ({', '.join(pickles[:3])}); they are not loaded, since "
            "unpickling can run code. Convert them to safetensors (save_pretrained) and try again"
        )
    raise ModelLoadError(f"{folder}: no *.safetensors weights found")


def _folder_digest(folder: Path) -> str | None:
    from amnesia.storage import MANIFEST_NAME, Manifest

    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        return Manifest.model_validate_json(manifest.read_text()).digest
    return None


def resolve_model(source: str, cache_root: Path | None = None, store: Any = None) -> tuple[Path | None, str | None]:
    """(local folder, digest) for a path or s3:// URI; (None, None) for a hub id. Pass the run's store:
    the default one reads its endpoint and keys from the environment."""
    if source.startswith("s3://"):
        from amnesia.storage import ArtifactStore

        cache = Path(cache_root or Path.home() / ".cache" / "amnesia" / "models")
        folder = (store or ArtifactStore()).fetch_dir(source, cache)
        return folder, folder.name
    path = Path(source)
    if path.exists():
        return path, _folder_digest(path)
    if "://" in source or source.startswith(("/", ".")):
        raise ModelLoadError(f"{source}: no such model folder")
    return None, None


def load_model(
    source: str,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    device: str = "cpu",
    cache_root: Path | None = None,
    store: Any = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer (pad token set to EOS when the tokenizer has none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, digest = resolve_model(source, cache_root, store)
    if folder is not None:
        check_weights(folder)
    where = str(folder) if folder is not None else source
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except OSError as err:
        hint = "" if folder is not None else " (a hub id needs network access; pass a local folder or an s3:// URI)"
        raise ModelLoadError(f"{source}: could not load the model: {str(err).splitlines()[0]}{hint}") from None
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelLoadError(
                f"{source}: the model needs custom code; set trust_remote_code: true in the "
                "config only if you trust its source"
            ) from None
        raise ModelLoadError(f"{source}: could not load the model: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, path=folder, digest=digest)
