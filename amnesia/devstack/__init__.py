"""The local development stack, apart from the library the image runs: SeaweedFS (seaweed), MLflow with its
basic-auth app and the reviewers' page (stack), and the watchdog that stops them by themselves.

May import: everything below the CLI. Imported only by the CLI, the pipelines' local runner, benches and tests.
"""
