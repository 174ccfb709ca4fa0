"""`amnesia store …`: put, get and verify folders in the artifact store; bucket and identities."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from amnesia.cli.base import Group, cli, client_settings
from amnesia.core.settings import load_settings

# ---------------------------------------------------------------- store


@cli.group(cls=Group)
def store() -> None:
    """Files and folders in the artifact store (s3:// URIs or local paths), with manifests."""


@store.command("put")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("uri")
def store_put(src: Path, uri: str) -> None:
    """Upload a file or a folder (a folder gets a manifest, written last)."""
    from amnesia.storage.artifacts import ArtifactStore

    st = ArtifactStore(client_settings())
    ref = st.put_dir(src, uri) if src.is_dir() else st.put_file(src, uri)
    click.echo(ref.model_dump_json())


@store.command("get")
@click.argument("uri")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--file", "is_file", is_flag=True, help="URI is a single file, not a folder.")
def store_get(uri: str, dst: Path, is_file: bool) -> None:
    """Download and verify a folder (or, with --file, one file)."""
    from amnesia.storage.artifacts import ArtifactStore

    st = ArtifactStore(client_settings())
    if is_file:
        st.get_file(uri, dst)
        click.echo(str(dst))
    else:
        manifest = st.get_dir(uri, dst)
        click.echo(f"{dst}: {len(manifest.files)} files, digest {manifest.digest}")


@store.command("init-bucket")
@click.option("--bucket", help="Bucket name (default AMNESIA_BUCKET).")
def store_init_bucket(bucket: str | None) -> None:
    """Create the project's bucket if it does not exist (idempotent; the cluster's bucket-init Job)."""
    from amnesia.storage.artifacts import ArtifactStore

    settings = load_settings()
    name = bucket or settings.bucket
    created = ArtifactStore(settings).ensure_bucket(name)
    click.echo(f"bucket {name}: {'created' if created else 'already there'}")


@store.command("s3-identities")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Where to write the file (0600).")
def store_s3_identities(out: Path) -> None:
    """Write SeaweedFS's identities file from the environment (the cluster's seaweedfs init container).

    Admin: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the pipeline's own Secret); read-only auditor, when
    set: AMNESIA_AUDITOR_ACCESS_KEY_ID / AMNESIA_AUDITOR_SECRET_ACCESS_KEY.
    """
    from amnesia.devstack import seaweed
    def cred(key_var: str, secret_var: str) -> seaweed.Credentials | None:
        key, secret = os.environ.get(key_var, "").strip(), os.environ.get(secret_var, "").strip()
        if not key and not secret:
            return None
        if not key or not secret or "CHANGE-ME" in key + secret:
            raise click.ClickException(f"set both {key_var} and {secret_var} (real values, not CHANGE-ME)")
        return seaweed.Credentials(access_key_id=key, secret_access_key=secret)

    admin = cred("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    if admin is None:
        raise click.ClickException("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
    auditor = cred("AMNESIA_AUDITOR_ACCESS_KEY_ID", "AMNESIA_AUDITOR_SECRET_ACCESS_KEY")
    ids = seaweed.Identities(admin=admin, auditor=auditor)
    seaweed.write_private(out, json.dumps(ids.document(), indent=1))
    click.echo(f"{out}: identities {', '.join(i['name'] for i in ids.document()['identities'])}")  # type: ignore[index, union-attr]


@store.command("verify")
@click.argument("uri")
def store_verify(uri: str) -> None:
    """Re-hash every object of a folder against its manifest; non-zero exit if any differs."""
    from amnesia.storage.artifacts import ArtifactStore

    manifest = ArtifactStore(client_settings()).verify(uri)
    click.echo(f"ok: {len(manifest.files)} files, {manifest.size} bytes, digest {manifest.digest}")


