"""The demo world: generated data, a small base model, and the walkthrough `amnesia demo` runs."""
