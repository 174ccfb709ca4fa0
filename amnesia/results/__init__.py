"""Layer 4 — the stage results: what each stage returns and stores, read back with `load(store, uri)`.

pydantic and the stored layout only, never torch: the gate, the registry, the audit and the review page
read them without loading a model. May import: core, science (torch-free parts: the metric registry),
storage. Imported by every layer above.
"""
