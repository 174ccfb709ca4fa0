"""Erasure requests: `amnesia requests submit|list|extend`, and `purge` after the decision."""

from __future__ import annotations

import json
from pathlib import Path

import click

from amnesia.cli.base import Group, cli, client_settings


@cli.group(cls=Group)
def requests() -> None:
    """The erasure-request queue (pending -> fulfilled on approval)."""


@requests.command("submit")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_submit(path: Path, root: str | None) -> None:
    """Queue the requests in a JSONL or YAML file."""
    from amnesia.storage.artifacts import ArtifactStore
    from amnesia.storage.requests import RequestQueue, load_requests

    settings = client_settings()
    ids = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}").submit(load_requests(path))
    click.echo(f"queued {len(ids)} requests")


@requests.command("list")
@click.option("--state", type=click.Choice(["pending", "fulfilled"]), default="pending", show_default=True,
              help="Requests waiting for a run, or those an approved model fulfilled.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request.")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_list(state: str, as_json: bool, root: str | None) -> None:
    """Request ids by due date (GDPR Art. 12(3)), soonest first: overdue ones lead. No subjects."""
    from datetime import UTC, datetime

    from amnesia.storage.artifacts import ArtifactStore
    from amnesia.storage.requests import RequestQueue

    settings = client_settings()
    queue = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}")
    now = datetime.now(UTC)
    for d in queue.by_due_date(state):  # type: ignore[arg-type]
        row = d.row(now)
        if as_json:
            click.echo(json.dumps(row))
            continue
        left = "OVERDUE by {} days".format(-row["days_left"]) if row["overdue"] else f"{row['days_left']} days left"
        extended = f", extended {row['extended_months']} months" if row["extended_months"] else ""
        when = left if state == "pending" else "fulfilled"
        if state == "pending" and (back := queue.reopened(d.request.request_id)):
            when += f", re-opened {back['at'][:10]} ({back['why']})"
        click.echo(f"{d.request.request_id}  received {d.request.received_at:%Y-%m-%d}  due {d.due:%Y-%m-%d}  "
                   f"{when}{extended}  ground 17(1)({d.request.ground})")  # fmt: skip


@requests.command("extend")
@click.option("--request", "request_id", required=True, help="The pending request's id.")
@click.option("--reason", required=True, help="The reason given to the person (kept in the store, not in MLflow).")
@click.option("--months", type=click.IntRange(1, 2), default=2, show_default=True, help="By how many months.")
@click.option("--by", "by", help="Who decides (default: AMNESIA_RUNNER or the OS user).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_extend(request_id: str, reason: str, months: int, by: str | None, root: str | None) -> None:
    """Extend a request's deadline (Art. 12(3): at most two further months, with a reason to the person)."""
    from amnesia.storage.artifacts import ArtifactStore
    from amnesia.storage.lineage import runner_identity
    from amnesia.storage.requests import RequestQueue

    settings = client_settings()
    queue = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}")
    due = queue.extend(request_id, reason, by or runner_identity(), months)
    click.echo(f"{request_id}: now due {due.due:%Y-%m-%d} (extended {due.extension.months if due.extension else 0} "
               "months in all)")  # fmt: skip


@cli.command("purge")
@click.option("--run", "runs", multiple=True, help="A pipeline run id (repeatable).")
@click.option("--request", "requests_", multiple=True, help="An erasure request id: every run that worked on it.")
@click.option("--dry-run", is_flag=True, help="List what would be destroyed; change nothing.")
@click.option("--by", "by", help="Who purges (default: AMNESIA_RUNNER or the OS user).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def purge_cmd(
    runs: tuple[str, ...], requests_: tuple[str, ...], dry_run: bool, by: str | None, root: str | None
) -> None:
    """Destroy a decided run's data key and delete its personal files; the evidence (ids, digests, metrics)
    stays, and `amnesia audit` shows the purge."""
    from amnesia.governance.purge import plan, purge
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    store, store_root = ArtifactStore(settings), root or f"s3://{settings.bucket}"
    if dry_run:
        record = plan(settings, store, store_root, list(runs), list(requests_))
        click.echo(f"would purge runs {', '.join(record.runs)} (versions: {', '.join(record.versions) or 'none'}):")
        click.echo(f"  destroy data keys {', '.join(record.key_ids)}")
        for f in record.files:
            click.echo(f"  delete {f.uri} ({f.size} bytes)")
        return
    record, uri = purge(settings, store, store_root, list(runs), list(requests_), by=by)
    click.echo(f"purged runs {', '.join(record.runs)}: {len(record.key_ids)} data keys destroyed, "
               f"{len(record.files)} personal files deleted; record {uri}")  # fmt: skip


