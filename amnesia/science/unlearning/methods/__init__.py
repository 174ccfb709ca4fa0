"""The registry of unlearning methods: name -> class (each with its config class beside it).

A new method is a small `Method` subclass decorated with `@register("name")` in a module imported here.
`sam+<name>` is the sharpness-aware wrapper of any separable registered method (methods/sam.py).
"""

from __future__ import annotations

from amnesia.science.unlearning.methods import (  # noqa: F401
    chunked,
    gradient,
    gradient_surgery,
    llm_surgery,
    npo,
    rmu,
    sha256,
    undo,
)
from amnesia.science.unlearning.methods.base import METHODS, LossOut, Method, Micro, StepInfo, register
from amnesia.science.unlearning.methods.lookup import method_class, method_names

__all__ = ["METHODS", "method_names", "LossOut", "Method", "Micro", "StepInfo", "method_class", "register"]
