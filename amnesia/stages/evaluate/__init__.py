"""Stage 4 — evaluate: the official scorer's metrics, MIA, MMLU and the attacks on one model, cached."""
