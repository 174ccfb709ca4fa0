"""The compute code follows the model's device: the same trace on every device at hand (CUDA when a GPU is
present, CPU always), equal to the CPU reference. Runs without the stack (`--noconftest` on a bare GPU box)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from amnesia.science.architecture import inspect_model
from amnesia.science.tracing.causal import Fact, TraceOptions, subject_embedding_std, trace_fact
from tests.reference_trace import reference_trace

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _olmo() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.OlmoConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                       num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_trace_on_the_models_device_equals_the_cpu_reference(device: str, prefix_cache: bool) -> None:
    cpu_model = _olmo()
    ids = (5, 17, 33, 40, 41, 8, 70, 12)
    with torch.no_grad():
        target = int(cpu_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    fact = Fact("f", ids, (2, 5), target)
    low, ref = reference_trace(cpu_model, inspect_model(cpu_model), fact, ("hidden", "mlp", "attn"), 4, 0.5, 3, 7)

    model = _olmo().to(device)
    layout = inspect_model(model)
    assert abs(subject_embedding_std(layout, [fact]) - subject_embedding_std(inspect_model(cpu_model), [fact])) < 1e-6
    opts = TraceOptions(samples=4, noise_std=0.5, window=3, seed=7, max_rows=40, prefix_cache=prefix_cache)
    fast = trace_fact(model, layout, fact, opts)
    assert abs(fast.corrupted - low) < 1e-4
    for kind in ("hidden", "mlp", "attn"):
        assert np.abs(fast.scores[kind] - ref[kind]).max() < 1e-4, kind
    assert np.abs(fast.scores["hidden"] - fast.corrupted).max() > 1e-4
