"""`amnesia demo`: the whole story on the embedded demo world; `demo prepare` builds the world."""

from __future__ import annotations

from pathlib import Path

import click

from amnesia.cli.base import Group, cli, client_settings
from amnesia.core.settings import load_settings

# ---------------------------------------------------------------- demo


@cli.group(cls=Group, invoke_without_command=True)
@click.option(
    "--keep-stack/--stop-stack",
    default=True,
    show_default=True,
    help="Leave the local stack running afterwards (to browse MLflow).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every task's whole output (else: in per-task log files).")
@click.option("--months", type=click.IntRange(min=1), help="N scheduled runs instead of one: the requests arrive in N "
              "monthly batches, each run starts from the last approved model and is approved by the demo reviewer.")
@click.pass_context
def demo(ctx: click.Context, keep_stack: bool, verbose: bool, months: int | None) -> None:
    """Run the whole story on the embedded demo world: one run, or with --months N, N scheduled runs."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.demo import run_demo, run_months

    if months:
        run_months(load_settings(), months, echo=click.echo, verbose=verbose)
        return
    run_demo(load_settings(), keep_stack=keep_stack, echo=click.echo, verbose=verbose)


@demo.command("prepare")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="YAML with `world:` and `train:` sections (amnesia.demo.prepare.DemoConfig).",
)
@click.option("--seed", type=int, help="Generator seed (overrides the config).")
@click.option("--root", help="Where to store it (default s3://<AMNESIA_BUCKET>).")
@click.option("--force", is_flag=True, help="Rebuild even if this content address exists.")
def demo_prepare(config_path: Path | None, seed: int | None, root: str | None, force: bool) -> None:
    """Generate the demo world and train its base model into the store (reused when unchanged)."""
    from amnesia.core.config import load_yaml, parse_model
    from amnesia.demo.prepare import DemoConfig, prepare, print_summary
    from amnesia.storage.artifacts import ArtifactStore

    data = load_yaml(config_path) if config_path else {}
    if seed is not None:
        data.setdefault("world", {})["seed"] = seed
    cfg = parse_model(DemoConfig, data, str(config_path or "--seed"))
    settings = client_settings()
    result = prepare(cfg, ArtifactStore(settings), root or f"s3://{settings.bucket}", echo=click.echo, force=force)
    print_summary(result, click.echo)


