"""Selective Amnesia: compliance unlearning for LLMs. This package is the pure library (no kfp)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selective-amnesia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
