"""Stage 3 — unlearn: train only the selected layers with a registered method (stage, trainer, config),
resumable from checkpoints; on several processes through torchrun (launch, rank)."""
