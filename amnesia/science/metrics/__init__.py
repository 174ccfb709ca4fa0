"""What is measured: the scorer's item metrics (items), its aggregates (aggregate), and the registry of
named figures, their directions and the evaluation metrics (registry). Torch-free. May import: core."""
