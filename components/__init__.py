"""KFP components: one thin lightweight component per stage.

Each component is a `@amnesia_component` function whose body imports the library and calls the
stage's `run_<stage>` function; nothing else. They are lightweight (not containerized) components
on purpose: kfp.local's SubprocessRunner can run them, and on a cluster they run in the project
image, which already holds the library, so no package is installed at start.
Module-level helpers are not visible inside a component body (kfp ships the function's source),
and component modules must not use `from __future__ import annotations` (kfp reads real types).
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

from amnesia import __version__

IMAGE_REPO = os.environ.get("AMNESIA_IMAGE_REPO", "ghcr.io/selective-amnesia/amnesia")
# Image tag = package version, so a compiled pipeline names exactly the code it was built with.
IMAGE = os.environ.get("AMNESIA_IMAGE_REF", f"{IMAGE_REPO}:{__version__}")

amnesia_component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)

__all__ = ["IMAGE", "amnesia_component"]
