"""Stage 1 — split: erasure requests (or ready SemEval files) into validated, deterministic sets."""
