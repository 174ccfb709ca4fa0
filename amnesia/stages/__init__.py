"""Layer 5 — the stages: `run_<stage>(config, ctx, ...) -> Result`, one subpackage each with its config
beside it (split, trace, unlearn, evaluate, gate). A stage reads its inputs through the store, calls the
science, and writes its outputs and lineage.

May import: core, science, storage, results. Never governance, runtime or the CLI.
"""
