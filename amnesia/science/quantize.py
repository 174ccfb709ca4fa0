"""Weight-only round-to-nearest quantization, group-wise: the attack of Zhang et al. (ICLR 2025, arXiv
2410.16454), who found that 4-bit quantization brings back most of what unlearning hid.

The quantizer is GPTQ's reference one (`Quantizer.find_params` / `quantize`, without GPTQ's error
feedback): per group of `group_size` input columns of a weight [out, in], with maxq = 2^bits − 1,
- asymmetric: range [min(w, 0), max(w, 0)], scale = (max − min) / maxq, zero = round(−min / scale);
- symmetric: range ±max|w|, scale = 2·max|w| / maxq, zero = (maxq + 1) / 2;
q = clamp(round(w / scale) + zero, 0, maxq) and the weight becomes scale · (q − zero). The model keeps
those dequantized values in its own dtype: the same numbers an integer kernel would multiply with, run
by the ordinary layers, so it works on any device. Embeddings and the LM head stay as they are (as in
GPTQ, AWQ and bitsandbytes' defaults).

NF4 (QLoRA, bitsandbytes' 4-bit format) is emulated the same way: blocks of 64 consecutive weights (of
the row-major flattened matrix, as bitsandbytes blocks them), each scaled by its absolute maximum and
rounded to the nearest of the 16 NF4 levels. Those are the values bitsandbytes' kernels multiply with,
bar its optional double quantization of the block scales; the kernels themselves (CUDA) are not used.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch


class QuantizeError(ValueError):
    pass


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """The dequantized values of a 2-D weight [out, in], quantized per group of input columns."""
    if w.dim() != 2:
        raise QuantizeError(f"quantize: a weight of shape {tuple(w.shape)} is not a matrix")
    if not 2 <= bits <= 8:
        raise QuantizeError(f"quantize: bits must lie in 2..8, got {bits}")
    out_features, in_features = w.shape
    group = in_features if group_size <= 0 else min(group_size, in_features)
    pad = (-in_features) % group
    x = torch.nn.functional.pad(w.float(), (0, pad)).view(out_features, -1, group)  # [out, groups, group]
    maxq = 2**bits - 1
    if symmetric:
        top = x.abs().amax(-1, keepdim=True)
        lo, hi = -top, top
    else:
        lo = x.amin(-1, keepdim=True).clamp(max=0)
        hi = x.amax(-1, keepdim=True).clamp(min=0)
    empty = (lo == 0) & (hi == 0)
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)  # an all-zero group stays zero
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    deq = (scale * (q - zero)).view(out_features, -1)[:, :in_features]
    return deq.to(w.dtype)


# The NF4 levels: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero (Dettmers et al. 2023).
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_tensor(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """The dequantized NF4 values of a 2-D weight [out, in]: per block of `block` consecutive values of
    the flattened matrix, w / absmax rounded to the nearest NF4 level, times absmax."""
    if w.dim() != 2:
        raise QuantizeError(f"quantize: a weight of shape {tuple(w.shape)} is not a matrix")
    flat = w.float().flatten()
    pad = (-flat.numel()) % block
    x = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = x.abs().amax(-1, keepdim=True)
    absmax = torch.where(absmax == 0, 1.0, absmax)  # an all-zero block stays zero
    levels = torch.tensor(NF4, dtype=torch.float32, device=w.device)
    nearest = (x / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)
    deq = (levels[nearest] * absmax).flatten()[: flat.numel()]
    return deq.view_as(w).to(w.dtype)


def quantized_copy(
    model: torch.nn.Module, bits: int, group_size: int = 128, symmetric: bool = False
) -> torch.nn.Module:
    """A copy of the model whose linear layers (not the embeddings or LM head) hold quantized weights.
    GPT-2's Conv1D layers hold their weight as [in, out]: quantized along the same input dimension."""
    return transformed_copy(model, lambda w: quantize_tensor(w, bits, group_size, symmetric))


def nf4_copy(model: torch.nn.Module, block: int = 64) -> torch.nn.Module:
    """The same with NF4 weights."""
    return transformed_copy(model, lambda w: nf4_tensor(w, block))


def transformed_copy(model: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.nn.Module:
    """A copy whose linear weights ([out, in]) went through fn; the embeddings and the LM head untouched."""
    from transformers.pytorch_utils import Conv1D

    out = copy.deepcopy(model)
    head = out.get_output_embeddings() if hasattr(out, "get_output_embeddings") else None
    done = 0
    with torch.no_grad():
        for module in out.modules():
            if module is head:
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(fn(module.weight))
            elif isinstance(module, Conv1D):
                module.weight.copy_(fn(module.weight.t()).t())
            else:
                continue
            done += 1
    if not done:
        raise QuantizeError(f"quantize: {type(model).__name__} has no linear layers to quantize")
    return out.eval()
