"""Name -> method class: the registered methods and the SAM wrapper of each separable one. Apart from the
package's __init__ so a method that wraps another (UNDO) can look one up without importing the package."""

from __future__ import annotations

from amnesia.science.unlearning.methods.base import METHODS, Method
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
