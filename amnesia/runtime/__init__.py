"""Layer 7 — runtime: what runs the stages as pipeline tasks. One function per component (tasks), the error
boundary they all use, preflight, the component handoff, the TrainJob launcher, the whole run's config
(pipeline_config, cluster_config) and the run summary.

May import: everything below (core … governance). Never kfp: components/ and pipelines/ wrap this.
"""
