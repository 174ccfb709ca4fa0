"""The base of every method's config (each method keeps its own beside it, in its module)."""

from __future__ import annotations

from amnesia.core.config import StrictModel


class MethodConfig(StrictModel):
    """Base of every method's config."""
