"""Layer 6 — governance: the registry and its versions, approval by an authenticated reviewer (identity),
the audit, evidence per request, purge, notifications, attacks on a registered version, the review page.

May import: core, science, storage, results, stages.
"""
