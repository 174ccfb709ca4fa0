"""Unlearning on several processes (torchrun): who this process is, how the model is split, and the few
collectives the trainer and the methods need.

The config's global batch is the same on any world size: an optimizer step takes `grad_accum`
micro-batches, dealt out across the processes in contiguous runs (a process left short gets a
zero-weight copy, so every process runs the same number of forward and backward passes, which DDP
and FSDP need). Gradients are averaged by DDP or FSDP's reduce-scatter; each micro-batch's loss is
scaled so the average is the single-process mean. The result is therefore that of one process with the
same config, to float tolerance, and a checkpoint resumes on any world size.

- fsdp: the modules holding the trainable parameters are sharded with FSDP2 (`fully_shard`): their
  weights, gradients and AdamW state are split across the processes. The frozen rest is an ordinary
  replicated module: no gradients, no optimizer state, nothing to shard for training.
- ddp: the model is wrapped in DistributedDataParallel; only trainable parameters have gradients.

Outside torchrun (or with one process) every helper here is the identity and nothing is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE = World()  # a single process


def world_from_env() -> World:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", 1)) > 1


@contextmanager
def session() -> Iterator[World]:
    """Join the process group torchrun describes (NCCL with GPUs, gloo without), pinning this process's
    GPU, and leave it at the end; a group the caller made already is used and left to the caller."""
    world = world_from_env()
    owned = world.size > 1 and not dist.is_initialized()
    if owned:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield world
    finally:
        if owned:
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ---------------------------------------------------------------- the model


def _units(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """The smallest modules that own the trainable parameters (a Linear for `weight`), merged up to
    their common parent when a parent holds nothing but trainable parameters (a whole MLP): the
    sharding units, innermost first, so an outer unit picks up only what inner ones left."""
    wanted = set(names)
    owners = sorted({n.rsplit(".", 1)[0] for n in names})
    merged: set[str] = set()
    for owner in owners:
        unit = owner
        while "." in unit:
            parent = unit.rsplit(".", 1)[0]
            module = model.get_submodule(parent)
            inside = [n for n, _ in module.named_parameters(prefix=parent)]
            # a ModuleList has no forward of its own, so FSDP's hooks on it would never run
            if isinstance(module, torch.nn.ModuleList | torch.nn.ModuleDict) or not all(n in wanted for n in inside):
                break
            unit = parent
        merged.add(unit)
    return sorted(merged, key=lambda u: (-u.count("."), u))


def parallelize(model: torch.nn.Module, names: Sequence[str], strategy: str, device: torch.device) -> torch.nn.Module:
    """The module to call for forward passes: the model itself (one process, or FSDP2 applied in place)
    or its DDP wrapper. Parameters keep their names on `unwrap(result)`."""
    if not active():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # unused: RMU's loss reads one layer's output, so trained layers above it get no gradient
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in _units(model, names):
        fully_shard(model.get_submodule(unit), mesh=mesh)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def whole_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's state with sharded tensors gathered (collective; every process gets it), for saving;
    None on one process, where the model's own state is whole."""
    if not active():
        return None
    return {k: full(v.detach()) for k, v in unwrap(model).state_dict().items()}


# ---------------------------------------------------------------- tensors and numbers


def reshard(model: torch.nn.Module) -> None:
    """Drop FSDP2's gathered copies of the parameters. Each sharded unit here is its own FSDP root, and a root
    keeps its gathered parameters after a forward pass for the backward that usually follows: a no-grad pass
    leaves them in place, so one who writes the shards between passes (UNDO's teacher swap, its noise) calls
    this first, or the next pass reads the old values. No-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in unwrap(model).modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for a sharded one)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` laid out as `param` is: this process's shard of it when param is sharded."""
    if isinstance(param, DTensor):
        return distribute_tensor(whole.detach().to(param.device), param.device_mesh, param.placements)
    return whole


def all_sum(values: Sequence[float]) -> list[float]:
    """Sum each number over the processes (in float64, so the order of ranks hardly matters)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_main(obj: Any) -> Any:
    """Rank 0's value of a picklable object on every process: one decision everywhere (best, stop)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
