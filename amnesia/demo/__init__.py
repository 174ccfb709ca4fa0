"""The demo world: generated data, a small base model, and the stage configs `amnesia demo` runs with."""
