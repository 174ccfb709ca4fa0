"""Training checkpoints in the artifact store: what a retried or killed run resumes from.

A checkpoint is a folder `<root>/step-<step>/` holding the trainable tensors, the best ones so far,
the optimizer's state, the RNG states, any tensors of the method's own (all safetensors: nothing is
unpickled on resume) and a JSON of the rest (step, method state, curves). The folder's manifest is
written last, so a checkpoint cut short by a kill has none and is skipped. A fingerprint of config,
base model, data and trainable names guards against resuming someone else's run.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from amnesia.core.errors import AmnesiaError, IntegrityError
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import MANIFEST_NAME, join

_STEP = re.compile(r"/step-(\d{8})/" + re.escape(MANIFEST_NAME) + "$")


class CheckpointError(AmnesiaError):
    """A checkpoint cannot be resumed from; the message says why."""


@dataclass
class Checkpoint:
    step: int
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    rng: dict[str, torch.Tensor]
    meta: dict[str, Any]  # fingerprint, method state, train state (JSON)
    method: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's own tensors (UNDO's teacher)


def _optimizer_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of an optimizer state_dict as flat safetensors entries; the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                rest.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": rest}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


class CheckpointStore:
    def __init__(self, store: ArtifactStore, root: str, fingerprint: str, keep: int = 2) -> None:
        self.store, self.root, self.fingerprint, self.keep = store, root, fingerprint, keep

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (manifest present), ascending."""
        found = (_STEP.search(uri) for uri in self.store.list(self.root))
        return sorted(int(m.group(1)) for m in found if m)

    def uri(self, step: int) -> str:
        return join(self.root, f"step-{step:08d}")

    def save(self, ckpt: Checkpoint) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in ckpt.trainable.items()}, folder / "trainable.safetensors"
            )
            if ckpt.best:
                save_file({k: v.contiguous() for k, v in ckpt.best.items()}, folder / "best.safetensors")
            opt_tensors, opt_meta = _optimizer_split(ckpt.optimizer)
            save_file(opt_tensors or {"_empty": torch.zeros(0)}, folder / "optimizer.safetensors")
            save_file({k: v.contiguous() for k, v in ckpt.rng.items()}, folder / "rng.safetensors")
            if ckpt.method:
                save_file({k: v.contiguous() for k, v in ckpt.method.items()}, folder / "method.safetensors")
            meta = ckpt.meta | {"step": ckpt.step, "fingerprint": self.fingerprint, "optimizer": opt_meta}
            (folder / "state.json").write_text(json.dumps(meta, sort_keys=True, allow_nan=True))
            uri = self.uri(ckpt.step)
            self.store.put_dir(folder, uri)
        for old in self.steps()[: -self.keep]:
            self.store.delete_dir(self.uri(old))
        return uri

    def latest(self) -> Checkpoint | None:
        """The newest complete, verified checkpoint; a corrupt one is skipped for the one before it."""
        for step in reversed(self.steps()):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    self.store.get_dir(self.uri(step), Path(tmp) / "ckpt")
                except IntegrityError:
                    continue
                return self._read(Path(tmp) / "ckpt", step)
        return None

    def _read(self, folder: Path, step: int) -> Checkpoint:
        meta = json.loads((folder / "state.json").read_text())
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.uri(step)}: made by a different config, base model, data or parameter selection "
                "(fingerprint differs); use a new run id, or set unlearn.resume: false to start over"
            )
        opt_tensors = {k: v for k, v in load_file(folder / "optimizer.safetensors").items() if k != "_empty"}
        best = load_file(folder / "best.safetensors") if (folder / "best.safetensors").exists() else {}
        method = load_file(folder / "method.safetensors") if (folder / "method.safetensors").exists() else {}
        return Checkpoint(
            step=step,
            trainable=load_file(folder / "trainable.safetensors"),
            best=best,
            optimizer=_optimizer_join(opt_tensors, meta.pop("optimizer")),
            rng=load_file(folder / "rng.safetensors"),
            meta=meta,
            method=method,
        )
