"""`amnesia demo`: the story so far, end to end against the local stack.

Today: stack up, a folder round trip through the artifact store with its manifest verified, and
a lineage run in MLflow that records it. Each stage issue extends this walkthrough.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from amnesia import stack
from amnesia.lineage import Lineage
from amnesia.settings import Settings, load_settings
from amnesia.storage import ArtifactStore, join

Echo = Callable[[str], None]


def _stack_settings(settings: Settings, state: stack.StackState) -> Settings:
    env = state.env()
    return load_settings(
        home=settings.home,
        bucket=settings.bucket,
        experiment=settings.experiment,
        s3_endpoint_url=env["AMNESIA_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"],
    )


def run_demo(settings: Settings, keep_stack: bool = True, echo: Echo = print) -> dict[str, object]:
    was_running = stack.running(settings.home) is not None
    t0 = time.monotonic()
    state = stack.up(settings)
    echo(f"stack   S3 {state.s3_endpoint}, MLflow {state.tracking_uri} ({time.monotonic() - t0:.1f}s)")
    cfg = _stack_settings(settings, state)
    store = ArtifactStore(cfg)
    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    uri = join(f"s3://{cfg.bucket}", "demo", run_id, "roundtrip")

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        (src / "nested").mkdir(parents=True)
        (src / "card.json").write_text(json.dumps({"run": run_id, "what": "foundation round trip"}))
        (src / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
        ref = store.put_dir(src, uri)
        echo(f"store   put {ref.size} bytes as {ref.uri} (digest {ref.digest[:16]}…)")
        manifest = store.get_dir(uri, Path(tmp) / "back")
        same = all((Path(tmp) / "back" / e.path).read_bytes() == (src / e.path).read_bytes() for e in manifest.files)
        store.verify(uri)
        echo(f"store   got it back: {len(manifest.files)} files, byte-identical={same}, manifest verified")

    lineage = Lineage(run_id, settings=cfg)
    with lineage.stage("roundtrip") as run:
        run.log_params({"artifact_uri": ref.uri, "artifact_digest": ref.digest})
        run.log_metrics({"artifact_bytes": ref.size, "files": len(manifest.files)})
    lineage.close("succeeded")
    echo(
        f"mlflow  run {lineage.parent_run_id()} in experiment '{cfg.experiment}': "
        f"{state.tracking_uri}/#/experiments/{lineage.experiment_id}"
    )

    if not keep_stack and not was_running:
        stack.down(settings.home)
        echo("stack   stopped")
    return {"uri": ref.uri, "digest": ref.digest, "identical": same, "parent_run_id": lineage.parent_run_id()}
