"""Layer 3 — storage and tracking: URIs (uri), the artifact store with manifests (artifacts), the stored
layout and stage table (layout), sealing, record and model loading from the store, the request queue as
stored, lineage in MLflow and the run context given to every stage.

May import: core, science. MLflow is imported here (lineage) and in governance only.
"""
