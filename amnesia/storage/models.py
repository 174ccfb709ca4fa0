"""Model and tokenizer loading: a local folder, an s3:// model folder (verified, cached by digest), or
a hub id when online. Weights load as safetensors only, and `trust_remote_code` is off unless asked.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amnesia.core.config import ModelConfig
from amnesia.core.errors import AmnesiaError

_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelLoadError(AmnesiaError):
    """A model folder or id could not be loaded; the message says why and what to do."""


log = logging.getLogger("amnesia.models")

@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # what the user gave
    path: Path | None  # the local folder it was read from (None for a hub id)
    digest: str | None  # the folder's manifest digest (s3, or a folder that has a manifest)


@dataclass(frozen=True)
class Placement:
    """Where and how a stage runs its model, resolved from a ModelConfig on this machine."""

    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # "fp32", "bf16" or "fp16"
    device_map: str | None = None  # inference over several GPUs; then `device` is where inputs go
    threads: int | None = None  # torch's CPU threads, pinned (model.cpu_threads); None: torch's default

    @property
    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    def params(self, cfg: ModelConfig) -> dict[str, str]:
        """What lineage records for this stage's model."""
        return {
            "model.device": self.device,
            "model.dtype": self.dtype,
            "model.device_map": self.device_map or "none",
            "model.attn_implementation": cfg.attn_implementation or "default",
            "model.trust_remote_code": str(cfg.trust_remote_code).lower(),
            "model.cpu_threads": str(self.threads or "default"),
        }


def as_model_config(model: ModelConfig | str) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else ModelConfig(uri=model)


def placement(cfg: ModelConfig, training: bool = False) -> Placement:
    """Resolve `device: auto` and `dtype: auto` for this machine.

    Inference (trace, evaluate) under auto: bf16 on a GPU that supports it, else fp32. Training under auto
    keeps fp32 master weights (the trainer's bf16 autocast gives the speed); an explicit dtype is honoured
    everywhere. A device_map applies to inference only.
    """
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"model.device is {cfg.device!r} but this machine has no CUDA GPU (use auto or cpu)")
        device = device if ":" in device else f"cuda:{torch.cuda.current_device()}"
    dtype = cfg.dtype
    if dtype == "auto":
        gpu_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        dtype = "bf16" if gpu_bf16 and not training else "fp32"
    device_map = cfg.device_map if not training and device.startswith("cuda") else None
    threads = None
    if cfg.cpu_threads is not None:  # a torchrun rank's share of them, the same on every machine
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, cfg.cpu_threads // max(1, ranks))
    return Placement(device=device, dtype=dtype, device_map=device_map, threads=threads)


def _pin_cpu(where: Placement) -> None:
    """Threads and kernels fixed before any compute: the weights and scores depend on both."""
    import torch

    if where.threads is not None:
        torch.set_num_threads(where.threads)
    kernels = str(torch.backends.cpu.get_cpu_capability())  # AVX2 when amnesia.core.numerics pinned it
    if os.environ.get("ATEN_CPU_CAPABILITY", "avx2").lower() == "avx2" and kernels != "AVX2":
        log.warning("CPU kernels are %s, not AVX2: torch was imported before amnesia, so another machine may "
                    "give other weights (import amnesia first)", kernels)  # fmt: skip


def load(
    cfg: ModelConfig | str, *, training: bool = False, store: Any = None, cache_root: Path | None = None
) -> tuple[LoadedModel, Placement]:
    """Load the model a stage needs, placed as its ModelConfig says."""
    cfg = as_model_config(cfg)
    if not cfg.uri:
        raise ModelLoadError("model.uri: no model given (a local folder, an s3:// model folder or a hub id)")
    where = placement(cfg, training)
    if where.device == "cpu":
        _pin_cpu(where)
    loaded = load_model(
        cfg.uri,
        trust_remote_code=cfg.trust_remote_code,
        dtype=where.torch_dtype,
        device=where.device,
        device_map=where.device_map,
        revision=cfg.revision,
        attn_implementation=cfg.attn_implementation,
        cache_root=cache_root,
        store=store,
    )
    return loaded, where


# What a tokenizer leaves in a model folder (fast, sentencepiece, BPE and WordPiece files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def check_weights(folder: Path) -> None:
    """Refuse a folder without safetensors weights (naming what it holds instead) or without a tokenizer."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a model folder")
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
    if any(folder.glob("*.safetensors")):
        if not any((folder / name).exists() for name in TOKENIZER_FILES):
            raise ModelLoadError(
                f"{folder}: no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); save the tokenizer beside the "
                "weights (tokenizer.save_pretrained(folder))"
            )
        return
    pickles = sorted(p.name for pat in _PICKLE_WEIGHTS for p in folder.glob(pat))
    if pickles:
        raise ModelLoadError(
            f"{folder}: holds only pickle weights ({', '.join(pickles[:3])}); they are not loaded, since "
            "unpickling can run code. Convert them to safetensors (save_pretrained) and try again"
        )
    raise ModelLoadError(f"{folder}: no *.safetensors weights found")


def _folder_digest(folder: Path) -> str | None:
    from amnesia.storage.artifacts import Manifest
    from amnesia.storage.uri import MANIFEST_NAME

    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        return Manifest.model_validate_json(manifest.read_text()).digest
    return None


def resolve_model(source: str, cache_root: Path | None = None, store: Any = None) -> tuple[Path | None, str | None]:
    """(local folder, digest) for a path or s3:// URI; (None, None) for a hub id. Pass the run's store:
    the default one reads its endpoint and keys from the environment."""
    if source.startswith("s3://"):
        from amnesia.storage.artifacts import ArtifactStore

        cache = Path(cache_root or Path.home() / ".cache" / "amnesia" / "models")
        folder = (store or ArtifactStore()).fetch_dir(source, cache)
        return folder, folder.name
    path = Path(source)
    if path.exists():
        return path, _folder_digest(path)
    if "://" in source or source.startswith(("/", ".")):
        raise ModelLoadError(f"{source}: no such model folder")
    return None, None


def _refuse_custom_code(folder: Path, source: str) -> None:
    """A config whose classes come from the model's own code (auto_map) loads only with trust_remote_code:
    say so by the config's field name, before transformers calls it an unknown architecture."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # no readable config: transformers' own error names it
    if isinstance(config, dict) and config.get("auto_map"):
        kind = config.get("model_type", "?")
        raise ModelLoadError(
            f"{source}: its architecture ({kind}) is the model's own code (config.json auto_map); set "
            "model.trust_remote_code: true in the run config only if you trust its source"
        )


def load_model(
    source: str,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    device: str = "cpu",
    device_map: str | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    cache_root: Path | None = None,
    store: Any = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer (pad token set to EOS when the tokenizer has none).
    With a device_map the weights are spread by accelerate and `device` is not used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, digest = resolve_model(source, cache_root, store)
    if folder is not None:
        check_weights(folder)
        if not trust_remote_code:
            _refuse_custom_code(folder, source)
    where = str(folder) if folder is not None else source
    try:
        extra = {"revision": revision} if revision and folder is None else {}
        if attn_implementation:
            extra["attn_implementation"] = attn_implementation
        if device_map:
            extra["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(
            where, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype, **extra
        )
        tokenizer = AutoTokenizer.from_pretrained(
            where, trust_remote_code=trust_remote_code, **({"revision": revision} if "revision" in extra else {})
        )
    except OSError as err:
        hint = "" if folder is not None else " (a hub id needs network access; pass a local folder or an s3:// URI)"
        raise ModelLoadError(f"{source}: could not load the model: {str(err).splitlines()[0]}{hint}") from None
    except ValueError as err:
        if "trust_remote_code" in str(err) or "does not recognize this architecture" in str(err):
            raise ModelLoadError(
                f"{source}: transformers does not know this architecture: it needs the model's own code (set "
                "model.trust_remote_code: true in the run config only if you trust its source) or a newer transformers"
            ) from None
        raise ModelLoadError(f"{source}: could not load the model: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not device_map:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, path=folder, digest=digest)


def weight_drift(model: Path, reference: Path) -> float:
    """How far a model's weights moved from a reference: ||w - w_ref|| / ||w_ref|| over every tensor the two
    share, read tensor by tensor from their safetensors files (neither model is loaded whole)."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                out |= {k: f for k in fh.keys()}  # noqa: SIM118  (safe_open has no __iter__)
        return out

    ours, theirs = tensors(model), tensors(reference)
    moved = total = 0.0
    for name in sorted(set(ours) & set(theirs)):
        with safe_open(str(ours[name]), framework="pt") as a, safe_open(str(theirs[name]), framework="pt") as b:
            x, y = a.get_tensor(name).double(), b.get_tensor(name).double()
        if x.shape == y.shape:
            moved += float((x - y).pow(2).sum())
            total += float(y.pow(2).sum())
    return (moved / total) ** 0.5 if total else 0.0
