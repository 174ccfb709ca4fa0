"""What LoRA adapters (unlearn.adapter) save: trainable numbers, AdamW's state and the step time, against
training the same selection's weights, in the same run on the same batch.

    .venv/bin/python bench/adapters.py [--model smollm|demo] [--layers 3] [--ranks 8,32] [--steps 5]

The selection is the first --layers layers' MLPs (SHA256's target); the step is the unlearn stage's
(select_trainable, then one AdamW step on a forget-style batch). Figures are ratios to full training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amnesia.stages.unlearn.config import AdapterConfig, UnlearnConfig  # noqa: E402
from amnesia.stages.unlearn.stage import select_trainable  # noqa: E402
from amnesia.storage.models import load_model  # noqa: E402


def _model(kind: str) -> tuple[torch.nn.Module, str]:
    if kind == "smollm":
        from amnesia.demo import smollm

        return load_model(str(smollm.prepare()), dtype="float32").model, "SmolLM2-135M-Instruct"
    from amnesia.demo.prepare import local_base_model

    return load_model(str(local_base_model())).model, "the demo model"


def measure(kind: str, layers: list[int], rank: int | None, steps: int, batch: torch.Tensor) -> dict[str, float]:
    model, _ = _model(kind)
    adapter = AdapterConfig(rank=rank, alpha=2.0 * rank) if rank else None
    names = select_trainable(model.train(), UnlearnConfig(layers=layers, adapter=adapter), layers)
    params = [p for n, p in model.named_parameters() if n in set(names)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for _ in range(steps + 1):  # the first step allocates the state: not timed
        t0 = time.perf_counter()
        (-model(batch, labels=batch).loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return {"trainable": sum(p.numel() for p in params), "state_bytes": state, "step_s": sorted(times[1:])[steps // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm", choices=["smollm", "demo"])
    ap.add_argument("--layers", type=int, default=3, help="the first N layers' MLPs train")
    ap.add_argument("--ranks", default="8,32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = 2048 if args.model == "demo" else 49152
    batch = torch.randint(0, vocab, (8, 64))
    layers = list(range(args.layers))
    _, name = _model(args.model)
    rows = [("full", measure(args.model, layers, None, args.steps, batch))]
    rows += [(f"lora r={r}", measure(args.model, layers, int(r), args.steps, batch)) for r in args.ranks.split(",")]
    full = rows[0][1]
    print(f"{name}, MLPs of layers {layers}, AdamW, batch 8×64, {args.threads} threads, median of {args.steps} steps")
    print(f"{'':12} {'trainable':>12} {'ratio':>7} {'AdamW state':>12} {'ratio':>7} {'step':>8} {'ratio':>6}")
    for label, r in rows:
        print(f"{label:12} {r['trainable']:>12,} {r['trainable'] / full['trainable']:>7.4f} "
              f"{r['state_bytes'] / 2**20:>10.2f}Mi {r['state_bytes'] / full['state_bytes']:>7.4f} "
              f"{r['step_s']:>7.3f}s {r['step_s'] / full['step_s']:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
