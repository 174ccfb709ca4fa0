"""`amnesia demo` (`make demo`): the whole story on the embedded demo world, through the real pipeline.

Stack up; the demo world and its memorising base model into S3 (reused when unchanged), every stored
object re-hashed against its manifest; the world's erasure requests queued; then the DAG in kfp.local —
split → trace → unlearn → evaluate (base ∥ candidate) → gate → register — and the summary: verdict,
before/after, model version, MLflow address, report. A second demo registers no second version (same
requests, same base model); once a person approved it, the queue is empty and there is nothing to run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from amnesia.core.settings import Settings
from amnesia.demo.prepare import (
    DemoArtifacts,
    DemoConfig,
    demo_evaluate_config,
    demo_gate_config,
    demo_split_config,
    demo_trace_config,
    demo_unlearn_config,
    prepare,
    print_summary,
)
from amnesia.devstack import stack
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.runtime.summary import summarize
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from pipelines.local import run_local

Echo = Callable[[str], None]
MODEL_NAME = "amnesia-demo"


DEMO_REVIEWER = "reviewer"  # the demo's MLflow user with MANAGE on the demo model (a local, loopback-only stack)


def demo_pipeline_config(demo: DemoArtifacts, root: str) -> PipelineConfig:
    return PipelineConfig(
        name="demo",
        model=demo.model_uri,
        model_name=MODEL_NAME,
        store={"root": root},  # type: ignore[arg-type]
        split=demo_split_config(demo.world_uri),
        trace=demo_trace_config(),
        unlearn=demo_unlearn_config(),
        evaluate=demo_evaluate_config(demo.world_uri),
        gate=demo_gate_config(),
    )


def run_demo(
    settings: Settings, keep_stack: bool = True, echo: Echo = print, verbose: bool = False
) -> dict[str, object]:
    was_running = stack.running(settings.home) is not None
    t0 = time.monotonic()
    state = stack.up(settings)
    echo(f"stack   S3 {state.s3_endpoint}, MLflow {state.tracking_uri} ({time.monotonic() - t0:.1f}s)")
    cfg = state.client_settings(settings)
    store = ArtifactStore(cfg)
    root = f"s3://{cfg.bucket}"

    demo = prepare(DemoConfig(), store, root, echo=echo)
    print_summary(demo, echo)
    for uri in (demo.world_uri, demo.model_uri):
        manifest = store.verify(uri)
        echo(f"store   verified {len(manifest.files)} objects of {uri} against the manifest")

    queue = RequestQueue(store, root)
    requests = load_requests_uri(store, join(demo.world_uri, "requests.jsonl"))
    added = queue.submit(requests, skip_known=True)
    pending = queue.list("pending")
    echo(f"queue   {len(added)} new erasure requests queued; {len(pending)} pending")
    result: dict[str, object] = {"demo": demo.model_dump(), "run_id": None, "lines": []}
    if not pending:
        echo("queue   nothing pending: every demo request was fulfilled by an approved model (`amnesia history "
             f"{MODEL_NAME}`)")  # fmt: skip
    else:
        run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        pipeline = demo_pipeline_config(demo, root)
        echo(f"run     {run_id}: preflight → split → trace → unlearn → evaluate → gate → register, in kfp.local")
        t1 = time.monotonic()
        work = Path(cfg.home) / "kfp-local"
        try:
            run_local(pipeline, cfg, run_id, work, logs=work / run_id / "logs", verbose=verbose)
        finally:
            lines = summarize(pipeline, cfg, run_id, reports=Path(cfg.home) / "reports")
            lines.append(f"logs    {work / run_id / 'logs'} (one file per task)")
            for line in lines:
                echo(line)
        echo(f"done    in {time.monotonic() - t1:.0f}s; the stack stays up for the MLflow UI (`amnesia stack down`)")
        result |= {"run_id": run_id, "lines": lines}
    if not keep_stack and not was_running:
        stack.down(settings.home)
        echo("stack   stopped")
    elif state.review_url:
        password = stack.add_user(Path(cfg.home), DEMO_REVIEWER)  # made once; the same password after
        state.mlflow_auth().grant(DEMO_REVIEWER, MODEL_NAME, "MANAGE")
        echo(f"review  {state.review_url}  sign in as {DEMO_REVIEWER} (password {password}) to approve or reject; "
             f"the pipeline's own user may not")  # fmt: skip
        result["review_url"] = state.review_url
    return result
