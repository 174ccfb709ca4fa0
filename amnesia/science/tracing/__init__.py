"""ROME-style causal tracing (causal), attribution patching and its exact confirmation (attribution), and
the rule that reads the effects to choose layers (layer_choice). May import: core, the rest of science."""
