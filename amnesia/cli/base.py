"""The root `amnesia` group and what every command module shares: one-line errors, client settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from amnesia import __version__
from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings, load_settings

# Lineage opened by a stage command run on its own (`amnesia split …`): its parent run is closed when the
# command ends, so it does not stay RUNNING (in the pipeline, the exit handler closes it).
STANDALONE: list[Any] = []


class Group(click.Group):
    """Turns library errors into one-line messages and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        ok = False
        try:
            result = super().invoke(ctx)
            ok = True
            return result
        except AmnesiaError as err:
            raise click.ClickException(str(err)) from None
        finally:
            while STANDALONE:
                STANDALONE.pop().end_parent(ok)


def client_settings(home: Path | None = None) -> Settings:
    """Settings for a client command: the environment, else the local stack running in home."""
    from amnesia.devstack import stack
    base = load_settings()
    stack.activate(home or base.home)
    return load_settings()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amnesia")
def cli() -> None:
    """Selective Amnesia: make a model forget, prove it, and hand it to a person for approval."""

