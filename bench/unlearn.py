"""Benchmark: layer-selected unlearning (the MLPs of a few layers) against full fine-tuning, on the same
model, data and method (sha256), in one run. Each variant runs in a fresh process, so peak memory is its own.

    .venv/bin/python bench/unlearn.py [--layers 8] [--hidden 256] [--select 0,1] [--steps 10] [--device cpu|cuda]

Prints per variant: trainable parameters, optimizer state size, peak memory above the loaded model
(CPU: resident set, reset through /proc/self/clear_refs; CUDA: torch's peak allocation) and steps per
second; then the ratios layer-selected / full.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def variant(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer
    from amnesia.demo.world import WorldConfig, generate
    from amnesia.science.architecture import inspect_model
    from amnesia.science.unlearning.data import PairedBatches, encode
    from amnesia.science.unlearning.methods import method_class
    from amnesia.science.unlearning.params import count, freeze_all_but, trainable_names
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.stages.unlearn.trainer import HeldOut, Trainer

    torch.manual_seed(0)
    world = generate(WorldConfig())
    tok = train_tokenizer(world.training_texts(), 2048)
    arch = TrainConfig(
        layers=args.layers, hidden=args.hidden, heads=max(1, args.hidden // 32), intermediate=4 * args.hidden
    )
    model = build_model(arch, tok).to(args.device)
    layers = [int(x) for x in args.select.split(",")]
    names = (
        [n for n, _ in model.named_parameters()]
        if kind == "full"
        else trainable_names(model, inspect_model(model), "mlp", layers)
    )
    params = freeze_all_but(model, names)
    cfg = UnlearnConfig(layers=layers, batch_size=args.batch, epochs=1000, early_stop_forget_exact=None)
    data = PairedBatches(
        [encode(tok, r) for r in world.forget], [encode(tok, r) for r in world.retain], args.batch, 0, tok.pad_token_id
    )
    method = method_class("sha256")(cfg.method_config(), model, params, layers=layers)
    trainer = Trainer(cfg, method, model, names, data, HeldOut([], [], []))
    model.train()

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kb("VmRSS:") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    trainer.train_step(0)  # warm-up: allocates grads and optimizer state
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        trainer.train_step(step)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM:") * 1024) - base
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {
        "variant": kind,
        "trainable": count(params),
        "total": count(list(model.parameters())),
        "optimizer_bytes": sum(t.numel() * t.element_size() for t in state),
        "peak_bytes": peak,
        "steps_per_s": args.steps / seconds,
    }


def _child(kind: str, args: argparse.Namespace, queue: Any) -> None:
    queue.put(variant(kind, args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--select", default="0,1", help="layers whose MLPs train in the layer-selected variant")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    rows = []
    for kind in ("layer-selected", "full"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(kind, args, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    mb = 1 / 2**20
    print(
        f"model: {args.layers} layers x {args.hidden} wide, {rows[0]['total']:,} parameters; sha256, batch "
        f"{args.batch} forget + {args.batch} retain, {args.steps} timed steps on {args.device}"
    )
    print(f"{'variant':<16}{'trainable':>12}{'optimizer MB':>14}{'peak MB':>10}{'steps/s':>10}")
    for r in rows:
        print(
            f"{r['variant']:<16}{r['trainable']:>12,}{r['optimizer_bytes'] * mb:>14.1f}"
            f"{r['peak_bytes'] * mb:>10.1f}{r['steps_per_s']:>10.2f}"
        )
    sel, full = rows
    print(
        f"ratios (layer-selected / full): trainable {sel['trainable'] / full['trainable']:.3f}, optimizer state "
        f"{sel['optimizer_bytes'] / full['optimizer_bytes']:.3f}, peak memory "
        f"{sel['peak_bytes'] / max(1, full['peak_bytes']):.3f}; "
        f"speed-up {sel['steps_per_s'] / full['steps_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
