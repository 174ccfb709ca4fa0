"""Stage 2 — trace: causal tracing of the forget facts, and the layers to unlearn."""
