"""The command line as a user meets it: every command and option says what it does."""

from __future__ import annotations

import click

from amnesia.cli import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, (*path, name))
        else:
            out.append((" ".join((*path, name)), command))
    return out


def test_every_command_and_option_has_help_text() -> None:
    commands = _commands(cli)
    assert len(commands) > 20
    silent = [name for name, command in commands if not command.help]
    silent += [f"{name} {p.opts[0]}" for name, command in commands for p in command.params
               if isinstance(p, click.Option) and p.name != "help" and not p.help]  # fmt: skip
    assert silent == []
