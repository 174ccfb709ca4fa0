"""The registry of unlearning methods: name -> class (each with its config class beside it).

A new method is a small `Method` subclass decorated with `@register("name")` in a module imported here.
"""

from __future__ import annotations

from amnesia.unlearn.methods import gradient, npo, rmu, sha256, surgery  # noqa: F401  (they register)
from amnesia.unlearn.methods.base import METHODS, LossOut, Method, Micro, StepInfo, register


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "LossOut", "Method", "Micro", "StepInfo", "method_class", "register"]
