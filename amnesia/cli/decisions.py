"""The human steps: `approve`, `reject`, `rollback`, the reviewers' page (`serve`), `pending`, `history`,
and the standing obligations (`obligations list|end`)."""

from __future__ import annotations

import click

from amnesia.cli.base import Group, cli, client_settings
from amnesia.core.settings import load_settings


@cli.command("approve")
@click.argument("name")
@click.argument("version")
@click.option("--note", required=True, help="What was checked (kept in the artifact store, not in MLflow).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def approve_cmd(name: str, version: str, note: str, root: str | None) -> None:
    """Promote a gate-passed candidate to `champion`; its requests move to fulfilled. The approver is the
    MLflow user this shell authenticates as (MLFLOW_TRACKING_USERNAME): MANAGE on the model, not the runner."""
    from amnesia.governance.identity import from_settings
    from amnesia.governance.registry import approve
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    store_root = root or f"s3://{settings.bucket}"
    tags = approve(settings, ArtifactStore(settings), store_root, name, version, from_settings(settings), note)
    previous = tags["amnesia.previous_champion"]
    click.echo(
        f"{name} v{version} is champion (previous: {previous}), approved by {tags['amnesia.approver']}; "
        f"note stored at {tags['amnesia.note_uri']}"
    )


@cli.command("reject")
@click.argument("name")
@click.argument("version")
@click.option("--note", required=True, help="Why it is rejected (kept in the artifact store, not in MLflow).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def reject_cmd(name: str, version: str, note: str, root: str | None) -> None:
    """Reject a candidate; its requests stay pending for the next run. The reviewer is the authenticated
    MLflow user, as for `approve`."""
    from amnesia.governance.identity import from_settings
    from amnesia.governance.registry import reject
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    who = from_settings(settings)
    reject(settings, ArtifactStore(settings), root or f"s3://{settings.bucket}", name, version, who, note)
    click.echo(f"{name} v{version} rejected by {who.user}")


@cli.command("rollback")
@click.argument("name")
@click.argument("version")
@click.option("--note", required=True, help="Why (kept in the artifact store, not in MLflow).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def rollback_cmd(name: str, version: str, note: str, root: str | None) -> None:
    """Move `champion` back to an earlier approved VERSION (MANAGE on the model). The requests that only the
    versions it leaves had fulfilled go back to pending; the queue, their evidence and `history` show it."""
    from amnesia.governance.identity import from_settings
    from amnesia.governance.obligations import rollback
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    who = from_settings(settings)
    done = rollback(settings, ArtifactStore(settings), root or f"s3://{settings.bucket}", name, version, who, note)
    reopened = ", ".join(done["reopened"]) or "none"
    click.echo(f"{name} v{version} is champion again (was v{done['from']}), by {who.user}; "
               f"re-opened requests: {reopened}; record {done['uri']}")  # fmt: skip


@cli.group("obligations", cls=Group)
def obligations() -> None:
    """Standing obligations: every request an approved version fulfilled binds every later version."""


@obligations.command("list")
@click.argument("name")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def obligations_list(name: str, root: str | None) -> None:
    """NAME's obligations: state, the version that fulfilled each, its last check."""
    from amnesia.storage.artifacts import ArtifactStore
    from amnesia.storage.obligations import ObligationStore

    settings = client_settings()
    found = ObligationStore(ArtifactStore(settings), root or f"s3://{settings.bucket}", name).list()
    if not found:
        click.echo(f"{name} has no obligations yet")
    for ob in found:
        last = ob.history[-1] if ob.history else None
        checked = (f"last checked by v{last.version}: forget score {last.scores.forget_score or 0:.3f} "
                   f"({'kept' if last.passed else 'CAME BACK'})") if last else "not checked since"  # fmt: skip
        click.echo(f"{ob.request_id:<24} {ob.state:<9} fulfilled by v{ob.fulfilled_by} {ob.fulfilled_at}; {checked}")


@obligations.command("end")
@click.argument("name")
@click.argument("request_id")
@click.option("--reason", required=True, help="Why the obligation ends (recorded with who and when).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def obligations_end(name: str, request_id: str, reason: str, root: str | None) -> None:
    """End one obligation: its key is destroyed, so its checks stop for good (visibly, in every later report)."""
    from amnesia.governance.obligations import end
    from amnesia.storage.artifacts import ArtifactStore
    from amnesia.storage.lineage import runner_identity

    settings = client_settings()
    ob = end(ArtifactStore(settings), root or f"s3://{settings.bucket}", name, request_id, runner_identity(), reason)
    click.echo(f"obligation {request_id} of {name} ended {ob.ended.at if ob.ended else ''}; key {ob.key_id} destroyed")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=5600, show_default=True, help="Port to listen on.")
@click.option(
    "--auth",
    type=click.Choice(["mlflow", "proxy"]),
    default="mlflow",
    show_default=True,
    help="mlflow: reviewers sign in with their MLflow password; proxy: a trusted header names them.",
)
@click.option("--proxy-header", default="X-Forwarded-User", show_default=True, help="--auth proxy: the user header.")
@click.option(
    "--trusted-proxy",
    "proxies",
    multiple=True,
    default=("127.0.0.1/32", "::1/128"),
    show_default=True,
    help="--auth proxy: networks the proxy connects from (repeatable); others are refused.",
)
@click.option("--secure-cookies", is_flag=True, help="Send the session cookie over HTTPS only (behind TLS).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def serve_cmd(host: str, port: int, auth: str, proxy_header: str, proxies: tuple[str, ...], secure_cookies: bool,
              root: str | None) -> None:  # fmt: skip
    """The reviewers' page: pending candidates, their evidence, approve or reject as a signed-in person.
    Runs as an MLflow admin (MLFLOW_TRACKING_USERNAME); AMNESIA_REVIEW_SECRET_KEY keeps sessions across restarts."""
    import os

    from amnesia.devstack import stack as stk
    from amnesia.governance.review import ReviewConfig, serve

    state = stk.running(load_settings().home)
    if state is not None and "MLFLOW_TRACKING_USERNAME" not in os.environ:  # the local stack: as its MLflow admin
        for key, value in state.env("service").items():
            os.environ.setdefault(key, value)
    settings = client_settings()
    cfg = ReviewConfig(auth=auth, proxy_header=proxy_header, trusted_proxies=proxies, secure_cookies=secure_cookies)
    if os.environ.get("AMNESIA_REVIEW_SECRET_KEY"):
        cfg.secret_key = os.environ["AMNESIA_REVIEW_SECRET_KEY"]
    click.echo(f"review page on http://{host}:{port} (auth: {auth})")
    serve(settings, root or f"s3://{settings.bucket}", host, port, cfg)


@cli.command("pending")
@click.argument("name", required=False)
def pending_cmd(name: str | None) -> None:
    """Versions waiting for a person's decision (every model's, or NAME's): gate, key figures, age."""
    from amnesia.core.progress import span
    from amnesia.governance.registry import pending

    rows = pending(client_settings(), name)
    if not rows:
        click.echo("nothing waits for a decision")
    for r in rows:
        figures = "  ".join(f"{k} {v:.3f}" for k, v in r["figures"].items())
        click.echo(f"{r['name']} v{r['version']:<4} gate {r['gate']:<10} {figures}  waiting {span(r['age_s'])}")
        click.echo(f"    run {r['pipeline_run_id']} by {r['runner']}: `amnesia audit {r['name']} {r['version']}`")


@cli.command("history")
@click.argument("name")
def history_cmd(name: str) -> None:
    """Every approval and rejection of the model's versions, oldest first."""
    from amnesia.governance.registry import history

    rows = history(client_settings(), name)
    if not rows:
        click.echo("no decisions yet")
    for r in rows:
        who = f"by {r['reviewer']:<16} ({r['authenticated_by']})"
        click.echo(f"{r['at']}  v{r['version']:<4} {r['status']:<9} {who} previous champion {r['previous_champion']}")


