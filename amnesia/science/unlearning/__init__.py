"""Unlearning as science: the method registry with a config beside each method (methods/), labels and
batches (data), what trains (params), collective ops that also run on one process (distributed).
May import: core, the rest of science."""
