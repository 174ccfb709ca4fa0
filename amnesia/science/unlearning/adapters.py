"""LoRA adapters (peft) on the selected parameters' Linear modules, as AILS-NTUA did for SemEval-2025 Task 4.

Training then moves a rank-r update B·A per module instead of its weight, so the optimizer holds
2·r·(in + out) numbers for it instead of 2·in·out. The candidate is saved merged (each update folded into its
weight, the peft layer replaced by the original Linear): serving, the attacks and the audit see an ordinary
model with the original tensor names, and nothing downstream needs peft.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from amnesia.science.unlearning.distributed import full
from amnesia.science.unlearning.params import SelectionError

ADAPTER = "default"  # peft's name for the one adapter a model gets


def adapted_modules(model: torch.nn.Module, names: Sequence[str], only: Sequence[str] | None = None) -> list[str]:
    """The Linear modules that own the selected tensors (all of them, or those whose last name is in `only`)."""
    owners = sorted({n.rsplit(".", 1)[0] for n in names})
    linear = [o for o in owners if isinstance(model.get_submodule(o), torch.nn.Linear)]
    chosen = [o for o in linear if only is None or o.rsplit(".", 1)[-1] in set(only)]
    if not chosen:
        which = f" named {', '.join(only)}" if only else ""
        raise SelectionError(f"unlearn.adapter: the selection holds no Linear module{which} to adapt")
    return chosen


def add_lora(
    model: torch.nn.Module, modules: Sequence[str], rank: int, alpha: float, dropout: float, seed: int
) -> list[str]:
    """Put a LoRA adapter on each named module (in place; B starts at zero, so the model's outputs do not
    change) and return the adapters' parameter names. A's random start comes from `seed`, not the global
    generator: a resumed run or another process count starts from the same adapters."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    names = [n for n, _ in model.named_parameters() if ".lora_" in n]
    if not names:
        raise SelectionError(f"unlearn.adapter: peft adapted none of {list(modules)}")
    return names


def has_adapters(model: torch.nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


@torch.no_grad()
def merge_lora(model: torch.nn.Module) -> int:
    """Fold every adapter into its base weight (in fp32) and put the base Linear back; returns how many.
    A collective for sharded adapters: every process calls it, and modules are visited in the same order."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        a, b = full(module.lora_A[ADAPTER].weight), full(module.lora_B[ADAPTER].weight)
        delta = (b.float() @ a.float()) * module.scaling[ADAPTER]
        if getattr(module, "fan_in_fan_out", False):  # GPT-2's Conv1D stores the weight transposed
            delta = delta.T
        base.weight.copy_((base.weight.float() + delta.to(base.weight.device)).to(base.weight.dtype))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, base)
        merged += 1
    return merged
