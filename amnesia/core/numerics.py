"""The same inputs give the same weights and the same verdict on any x86 machine.

A CPU's instruction set picks torch's kernels (ATen's AVX-512 or AVX2 paths, MKL's and oneDNN's code
paths), and each sums in its own order: the demo's candidate differed between two machines of one kind
(one with AVX-512, one without), and so did its gate. Importing `amnesia` pins all three to AVX2, which
every x86-64 machine of the last decade has, before torch is imported (they read these variables once,
when loaded); MKL's conditional numerical reproducibility (MKL_CBWR) is what makes its results equal
across CPUs. With a fixed thread count (model.cpu_threads) that makes CPU runs bit-reproducible. A
variable the user set wins; a GPU run is not affected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

PORTABLE_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL (matrix products on the CPU), reproducible across CPUs
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (some convolutions and bf16 paths)
}


def pin_cpu_numerics(env: MutableMapping[str, str] = os.environ) -> bool:
    """Set the variables (unless set already); False when torch was loaded before: too late for it."""
    for key, value in PORTABLE_CPU.items():
        env.setdefault(key, value)
    return "torch" not in sys.modules
