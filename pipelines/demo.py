"""`amnesia demo` (`make demo`): the whole story on the embedded demo world, through the real pipeline.

Stack up; the demo world and its memorising base model into S3 (reused when unchanged), every stored
object re-hashed against its manifest; the world's erasure requests queued; then the DAG in kfp.local —
split → trace → unlearn → evaluate (base ∥ candidate) → gate → register — and the summary: verdict,
before/after, model version, MLflow address, report. A second demo registers no second version (same
requests, same base model: it is not run again, and the run that made the version is summarised); once a
person approved it, the queue is empty and there is nothing to run.

`amnesia demo --months N` tells the story of N scheduled runs instead: the world's requests arrive in N
monthly batches; each month's run starts from the champion the last one left (incremental), is checked
against every earlier month's people (the standing obligations), and is approved by the demo's reviewer,
so the obligations table grows run by run.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from amnesia.runtime.summary import registered_version, summarize
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import ErasureRequest, RequestQueue, load_requests_uri, request_digest
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


def _batches(items: list, months: int) -> list[list]:  # type: ignore[type-arg]
    """Contiguous, near-equal batches in the order given (the first months get the extra one)."""
    size, extra = divmod(len(items), months)
    out, at = [], 0
    for m in range(months):
        n = size + (m < extra)
        out.append(items[at : at + n])
        at += n
    return out


def _registered(cfg: Settings, run_id: str) -> str | None:
    """The version this run registered, if its gate passed."""
    mv = registered_version(cfg, MODEL_NAME, run_id, None, None)
    return str(mv.version) if mv is not None else None


def _made_already(cfg: Settings, demo: DemoArtifacts, pending: list[ErasureRequest]) -> Any | None:
    """The version a run would make again: these requests, this base model, and no champion yet (so a run
    would start from the original). A run with a champion plans from it, so it is never skipped."""
    from mlflow.exceptions import MlflowException

    from amnesia.governance.versions import champion_of, find_version, registry_client

    client = registry_client(cfg)
    try:
        if champion_of(client, MODEL_NAME) is not None:
            return None
        return find_version(client, MODEL_NAME, request_digest(pending), demo.model_digest, demo.model_digest)
    except MlflowException:  # the demo model is not registered yet
        return None


def obligation_lines(store: ArtifactStore, root: str) -> list[str]:
    """The model's standing obligations as a table: request, fulfilled by, last check."""
    from amnesia.storage.obligations import ObligationStore

    rows = ObligationStore(store, root, MODEL_NAME).list()
    out = [f"        {'request':<14} {'state':<8} {'fulfilled':>9}  last check (forget score, per person)"]
    for ob in rows:
        last = ob.history[-1] if ob.history else None
        check = (f"v{last.version}: {last.scores.forget_score or 0:.3f} {'kept' if last.passed else 'CAME BACK'}"
                 if last else f"at fulfilment: {(ob.at_fulfilment.forget_score or 0) if ob.at_fulfilment else 0:.3f}")
        out.append(f"        {ob.request_id:<14} {ob.state:<8} {'v' + ob.fulfilled_by:>9}  {check}")
    return out


def run_months(settings: Settings, months: int, echo: Echo = print, verbose: bool = False) -> list[dict[str, object]]:
    """N scheduled runs, each approved by the demo's reviewer; stops at the first gate that fails."""
    from amnesia.governance.identity import login
    from amnesia.governance.registry import approve

    if months < 1:
        raise ValueError("--months: at least 1")
    state = stack.up(settings)
    cfg = state.client_settings(settings)
    store, root = ArtifactStore(cfg), f"s3://{cfg.bucket}"
    demo = prepare(DemoConfig(), store, root, echo=echo)
    queue = RequestQueue(store, root)
    everyone = load_requests_uri(store, join(demo.world_uri, "requests.jsonl"))
    password = stack.add_user(Path(cfg.home), DEMO_REVIEWER)
    done: list[dict[str, object]] = []
    for month, batch in enumerate(_batches(everyone, months), start=1):
        added = queue.submit(batch, skip_known=True)
        pending = queue.list("pending")
        echo(f"month   {month}/{months}: {len(added)} new erasure requests; {len(pending)} pending")
        if not pending:
            continue
        version, run_id, lines = None, "", []
        for start in ("auto", "cumulative"):  # what an operator does when an incremental month fails its gate
            run_id = f"demo-m{month}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            pipeline = demo_pipeline_config(demo, root)
            pipeline = pipeline.model_copy(update={"history": pipeline.history.model_copy(update={"start": start})})
            work = Path(cfg.home) / "kfp-local"
            with contextlib.suppress(RuntimeError):  # a failed gate is read from the summary below
                run_local(pipeline, cfg, run_id, work, logs=work / run_id / "logs", verbose=verbose)
            lines = summarize(pipeline, cfg, run_id, reports=Path(cfg.home) / "reports")
            for line in lines:
                echo(line)
            version = _registered(cfg, run_id)
            mode = store.get_json(join(root, "runs", run_id, "preflight", "plan.json"))["mode"]
            if version is not None or mode != "incremental":
                break
            echo(f"month   {month}: built on the champion, the candidate failed its gate; running the month "
                 "cumulative (from the original model, every request so far)")  # fmt: skip
        if version is None:
            echo(f"month   {month}: the gate failed, so nothing was registered; the story stops here")
            break
        state.mlflow_auth().grant(DEMO_REVIEWER, MODEL_NAME, "MANAGE")
        reviewer = login(state.tracking_uri, DEMO_REVIEWER, password)
        approve(cfg, store, root, MODEL_NAME, version, reviewer, f"demo month {month}: report and obligations read")
        echo(f"approve {MODEL_NAME} v{version} by {DEMO_REVIEWER} (demo month {month}); obligations now:")
        for line in obligation_lines(store, root):
            echo(line)
        done.append({"month": month, "run_id": run_id, "version": version, "lines": lines})
    if state.review_url:
        echo(f"review  {state.review_url}  sign in as {DEMO_REVIEWER} (password {password}); "
             f"`amnesia stack env --user {DEMO_REVIEWER}` for the CLI")  # fmt: skip
    return done


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
    elif (made := _made_already(cfg, demo, pending)) is not None:
        run_id = str(made.tags[Tag.PIPELINE_RUN_ID])
        echo(f"run     not run again: these {len(pending)} requests on this base model made {MODEL_NAME} version "
             f"{made.version} (run {run_id}); the same inputs give the same model. That run:")  # fmt: skip
        lines = summarize(demo_pipeline_config(demo, root), cfg, run_id, reports=Path(cfg.home) / "reports")
        for line in lines:
            echo(line)
        result |= {"run_id": run_id, "lines": lines}
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
