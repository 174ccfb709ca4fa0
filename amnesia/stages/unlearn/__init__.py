"""Stage 3 — unlearn: layer-selected training with a registry of methods (see stage.py)."""
