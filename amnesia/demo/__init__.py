"""The demo world: generated data, a small base model, and the stage configs `amnesia demo` runs with.

May import: everything below the CLI. Imported only by the CLI, the pipelines, benches and tests.
"""
