"""The command line as a user meets it: every command and option says what it does."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

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


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amnesia.core.config import load_yaml

    (tmp_path / "cfg" / "data").mkdir(parents=True)
    (tmp_path / "cfg" / "data" / "forget.jsonl").write_text("")
    (tmp_path / "cfg" / "run.yaml").write_text(
        "model: {uri: org/model}\nname: data\n"
        "split: {forget: data/forget.jsonl, retain: data/missing.jsonl, corpus: s3://b/c.jsonl}\n"
        "evaluate: {mmlu: {uri: cais/mmlu}}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    data = load_yaml("cfg/run.yaml")
    assert data["split"]["forget"] == str((tmp_path / "cfg" / "data" / "forget.jsonl").resolve())
    assert data["split"]["retain"] == "data/missing.jsonl"  # not there: left as written (its error names it)
    assert data["split"]["corpus"] == "s3://b/c.jsonl" and data["evaluate"]["mmlu"]["uri"] == "cais/mmlu"
    assert data["model"]["uri"] == "org/model" and data["name"] == "data"  # hub ids and names untouched
