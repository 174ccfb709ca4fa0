"""Layer 2 — the science, pure: record schemas, causal tracing and attribution, layer choice, the unlearning
methods and their configs, item metrics and their aggregation, the metric registry, attacks, quantization,
generation, MMLU and plots. Functions take data and return data (torch allowed).

May import: core. Never storage, MLflow, kfp, click or boto3 (checked).
"""
