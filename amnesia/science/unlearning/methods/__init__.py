"""The registry of unlearning methods: name -> class (each with its config class beside it).

A new method is a small `Method` subclass decorated with `@register("name")` in a module imported here.
`sam+<name>` is the sharpness-aware wrapper of any separable registered method (methods/sam.py).
"""

from __future__ import annotations

from amnesia.science.unlearning.methods import chunked, gradient, gradient_surgery, llm_surgery, npo, rmu, sha256  # noqa: F401
from amnesia.science.unlearning.methods.base import METHODS, LossOut, Method, Micro, StepInfo, register
from amnesia.science.unlearning.methods.sam import PREFIX, sam_over


def method_class(name: str) -> type[Method]:
    if name.startswith(PREFIX) and name[len(PREFIX) :] in METHODS:
        return sam_over(METHODS[name[len(PREFIX) :]])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))} (and sam+<one of them>)")
    return METHODS[name]


def method_names() -> list[str]:
    """Every name a run can give: the registered methods and the SAM wrapper of each one it fits."""
    sam = [PREFIX + n for n, c in sorted(METHODS.items()) if c.separable() and c.backward is Method.backward]
    return sorted(METHODS) + sam


__all__ = ["METHODS", "method_names", "LossOut", "Method", "Micro", "StepInfo", "method_class", "register"]
