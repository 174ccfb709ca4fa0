"""The same inputs give the same weights and the same verdict on any x86 machine of one vendor.

A CPU's instruction set picks torch's kernels (ATen's AVX-512 or AVX2 paths, MKL's and oneDNN's code paths),
and each sums in its own order: the same 20 training steps give other weights under AVX-512 than under AVX2
kernels (tests/test_numerics.py), and the demo's figures and gate moved with them. Importing `amnesia` pins
all three to AVX2, which every x86-64 machine of the last decade has, before torch is imported (they read
these variables once, when loaded). With a fixed thread count (model.cpu_threads) that makes CPU runs
bit-reproducible across Intel machines. Not across vendors: MKL honours a branch pin other than AUTO or
COMPATIBLE on Intel CPUs only, and on an AMD one MKL_CBWR=AVX2 silently means AUTO (Intel's documentation;
the demo's figures differ between an Intel and an AMD CI machine: README). COMPATIBLE (SSE2 paths) is MKL's
cross-vendor branch; it is not the default because its equality and cost on both were not measured here.
A variable the user set wins; a GPU run is not affected.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PORTABLE_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL (matrix products on the CPU), reproducible across Intel CPUs (AUTO on others)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (some convolutions and bf16 paths)
}


def pin_cpu_numerics(env: MutableMapping[str, str] = os.environ) -> None:
    """Set the variables unless set already (too late for a torch already loaded: model loading warns)."""
    for key, value in PORTABLE_CPU.items():
        env.setdefault(key, value)
