"""Same inputs, same weights on any x86 CPU: importing amnesia pins torch's, MKL's and oneDNN's kernels to
AVX2 (with the thread count fixed by model.cpu_threads). Twenty training steps of a small OLMo-2 are hashed
in fresh processes: the pinned run here, and this machine made to look like an AVX2-only one, agree; the
native AVX-512 kernels (where this CPU has them) give other weights, which is why the pin exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from amnesia.core.numerics import PORTABLE_CPU

TRAIN = """
import json, sys, hashlib
{prelude}
import torch
from transformers import Olmo2Config, Olmo2ForCausalLM
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = Olmo2Config(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                  max_position_embeddings=64, eos_token_id=1, pad_token_id=0, bos_token_id=2)
model = Olmo2ForCausalLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
g = torch.Generator().manual_seed(1)
for _ in range(20):
    ids = torch.randint(0, 256, (16, 32), generator=g)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
h = hashlib.sha256()
for k, v in sorted(model.state_dict().items()):
    h.update(v.detach().contiguous().numpy().tobytes())
print(json.dumps({{"kernels": str(torch.backends.cpu.get_cpu_capability()), "weights": h.hexdigest()}}))
"""


def _train(prelude: str, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU and k != "MKL_ENABLE_INSTRUCTIONS"}
    out = subprocess.run([sys.executable, "-c", TRAIN.format(prelude=prelude)], env=base | env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_amnesia_pins_portable_cpu_kernels() -> None:
    pinned = _train("import amnesia")
    assert pinned["kernels"] == "AVX2"
    assert pinned == _train("import amnesia")  # run to run
    # An AVX2-only machine: MKL may dispatch no wider, nor may torch or oneDNN.
    avx2_only = _train("", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
                       MKL_CBWR="AVX2")  # fmt: skip
    assert avx2_only == pinned
    native = _train("")
    if native["kernels"] == "AVX512":  # the control, where this CPU can show it
        assert native["weights"] != pinned["weights"], "AVX-512 kernels gave the AVX2 weights: the pin proves nothing"
