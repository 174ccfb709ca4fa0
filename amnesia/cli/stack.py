"""`amnesia stack …`: the local S3-compatible server, MLflow and the reviewers' page (127.0.0.1 only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from amnesia.cli.base import Group, cli
from amnesia.core.settings import load_settings

# ---------------------------------------------------------------- stack


@cli.group(cls=Group)
def stack() -> None:
    """The local S3-compatible server and MLflow tracking server (127.0.0.1 only)."""


@stack.command("up")
@click.option("--owner-pid", type=int, help="Stop the stack by itself when this process ends.")
@click.option("--ttl", type=float, help="Stop the stack by itself after this many seconds.")
def stack_up(owner_pid: int | None, ttl: float | None) -> None:
    """Start the stack (or find it running) and print how to reach it."""
    from amnesia.devstack import stack as stk
    from amnesia.storage.artifacts import ArtifactStore

    settings = load_settings()
    state = stk.up(settings, owner_pid=owner_pid, ttl_s=ttl)
    store = ArtifactStore(state.client_settings())
    buckets = [b["Name"] for b in store.s3.list_buckets()["Buckets"]]
    click.echo(f"S3      {state.s3_endpoint}  buckets: {', '.join(sorted(buckets))}  (SeaweedFS)")
    click.echo(f"MLflow  {state.tracking_uri}  (UI and /health; users: `amnesia stack user add NAME`)")
    click.echo(f"review  {state.review_url}  (the reviewers' page: sign in as an MLflow user)")
    click.echo(f"data    {stk.s3_dir(Path(state.home))}, {Path(state.home) / 'mlflow.db'}  (kept by `stack down`)")
    click.echo(f"access  {state.audit_log}  (`amnesia stack logs audit`)")
    click.echo(f"state   {state.home}  (`amnesia stack env` prints the variables for other shells)")


@stack.command("down")
@click.option("--purge", is_flag=True, help="Also delete the stored objects, MLflow's database and the logs.")
@click.option("--yes", is_flag=True, help="With --purge: do not ask for confirmation.")
def stack_down(purge: bool, yes: bool) -> None:
    """Stop exactly what `stack up` started. The data stays for the next `stack up` unless --purge."""
    from amnesia.devstack import stack as stk
    home = load_settings().home
    if not purge:
        stopped = stk.down(home)
        click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return
    doomed = stk.stored_data(home)
    if not doomed:
        stk.down(home)
        click.echo("nothing stored: nothing to purge")
        return
    listing = ", ".join(str(p) for p in doomed)
    if not yes and not click.confirm(f"Delete {listing}? Every object, run, model version and audit trail goes"):
        raise click.ClickException("purge cancelled: nothing was deleted")
    gone = stk.purge(home)
    click.echo(f"purged: {', '.join(str(p) for p in gone)}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def stack_status(as_json: bool) -> None:
    """Is the stack up, and where."""
    from amnesia.devstack import stack as stk
    report = stk.status(load_settings().home)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    if "s3" not in report:
        kept = " (stored data kept: `amnesia stack up` serves it again)" if report["data_present"] else ""
        click.echo(f"not running{kept}")
        return
    click.echo(f"running: {report['running']}")
    click.echo(f"S3      {report['s3']['endpoint']}  alive={report['s3']['alive']}  data={report['s3']['data']}")  # type: ignore[index]
    click.echo(f"MLflow  {report['mlflow']['tracking_uri']}  alive={report['mlflow']['alive']}")  # type: ignore[index]
    click.echo(f"review  {report['review']['url']}  alive={report['review']['alive']}")  # type: ignore[index]


@stack.command("env")
@click.option("--auditor", is_flag=True, help="The read-only auditor identity instead of the admin one.")
@click.option("--user", help="Act as this MLflow user of the stack (a reviewer: `amnesia stack user add`).")
def stack_env(auditor: bool, user: str | None) -> None:
    """Print `export` lines that point a shell at the running stack."""
    from amnesia.devstack import stack as stk
    state = stk.running(load_settings().home)
    if state is None:
        raise click.ClickException("the local stack is not running (`amnesia stack up`)")
    for key, value in state.env("auditor" if auditor else "admin", user=user).items():
        click.echo(f"export {key}={value}")


@stack.group("user", cls=Group)
def stack_user() -> None:
    """MLflow users of the local stack: the people who review (the cluster manages its own)."""


@stack_user.command("add")
@click.argument("user")
@click.option(
    "--grant", "models", multiple=True, help="Give MANAGE on this registered model: it may decide (repeatable)."
)
def stack_user_add(user: str, models: tuple[str, ...]) -> None:
    """Make an MLflow user (idempotent) and print its password; --grant lets it decide on a model."""
    from amnesia.devstack import stack as stk
    settings = load_settings()
    password = stk.add_user(settings.home, user)
    state = stk.running(settings.home)
    assert state is not None  # add_user checked
    for model in models:
        state.mlflow_auth().grant(user, model, "MANAGE")
    click.echo(f"user {user}  password {password}" + (f"  MANAGE on {', '.join(models)}" if models else ""))


@stack_user.command("grant")
@click.argument("user")
@click.argument("model")
@click.option("--permission", type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "DENY"]), default="MANAGE",
              show_default=True, help="MLflow's permission to set (MANAGE may decide).")  # fmt: skip
def stack_user_grant(user: str, model: str, permission: str) -> None:
    """Set an MLflow user's permission on a registered model (MANAGE may decide on its versions)."""
    from amnesia.devstack import stack as stk
    state = stk.running(load_settings().home)
    if state is None:
        raise click.ClickException("the local stack is not running (`amnesia stack up`)")
    state.mlflow_auth().grant(user, model, permission)
    click.echo(f"{user}: {permission} on registered model {model}")


@stack.command("logs")
@click.argument("name", type=click.Choice(["audit", "s3", "mlflow", "review", "watchdog"]), default="audit")
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="How many of the newest lines.")
@click.option("--key", "key_part", help="audit: only requests whose object key contains this text.")
@click.option("--json", "as_json", is_flag=True, help="audit: print the records as JSON lines.")
def stack_logs(name: str, lines: int, key_part: str | None, as_json: bool) -> None:
    """Show a stack log; `audit` (the default) is the S3 access log: who read or wrote which object."""
    from collections import deque

    from amnesia.devstack import stack as stk
    from amnesia.storage import access_log as s3audit
    path = stk.log_file(load_settings().home, name)
    if not path.exists():
        raise click.ClickException(f"{path}: no such log yet (has `amnesia stack up` run in this home?)")
    if name != "audit":
        for line in deque(path.read_text(errors="replace").splitlines(), maxlen=lines):
            click.echo(line)
        return
    records = (r for r in s3audit.read(path) if key_part is None or key_part in r.key)
    for record in deque(records, maxlen=lines):
        click.echo(record.model_dump_json() if as_json else record.line())


