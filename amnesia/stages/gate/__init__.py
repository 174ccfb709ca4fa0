"""Stage 5 — gate: floors and ceilings on base and candidate figures, the verdict, the report."""
