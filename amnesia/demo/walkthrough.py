"""`amnesia demo`: the story so far, end to end against the local stack.

Today: stack up; the demo world and its memorising base model into S3 (reused when unchanged),
with every stored object re-hashed against its manifest; the world's erasure requests queued and
split into forget / retain / MIA sets; causal tracing picks the layers; SHA256 unlearning trains
their MLPs into a candidate model; base and candidate are scored with the SemEval metrics (the base
from the cache after the first run), gated, and reported in HTML and Markdown; a lineage run in
MLflow that records all of it by digest.
Each stage issue extends this walkthrough.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from amnesia import stack
from amnesia.config import GateConfig
from amnesia.context import RunContext
from amnesia.demo.prepare import (
    DemoConfig,
    demo_evaluate_config,
    demo_split_config,
    demo_trace_config,
    demo_unlearn_config,
    prepare,
    print_summary,
)
from amnesia.evaluate import run_evaluate
from amnesia.gate import run_gate, scores
from amnesia.lineage import Lineage
from amnesia.requests import RequestQueue, load_requests_uri
from amnesia.settings import Settings
from amnesia.split import run_split
from amnesia.storage import ArtifactStore, join
from amnesia.trace import run_trace
from amnesia.unlearn.stage import run_unlearn

Echo = Callable[[str], None]


def run_demo(settings: Settings, keep_stack: bool = True, echo: Echo = print) -> dict[str, object]:
    was_running = stack.running(settings.home) is not None
    t0 = time.monotonic()
    state = stack.up(settings)
    echo(f"stack   S3 {state.s3_endpoint}, MLflow {state.tracking_uri} ({time.monotonic() - t0:.1f}s)")
    cfg = state.client_settings(settings)
    store = ArtifactStore(cfg)
    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    demo = prepare(DemoConfig(), store, f"s3://{cfg.bucket}", echo=echo)
    print_summary(demo, echo)
    for uri in (demo.world_uri, demo.model_uri):
        manifest = store.verify(uri)
        echo(f"store   verified {len(manifest.files)} objects of {uri} against the manifest")

    # Stage 1: the world's erasure requests join the queue; split works on a snapshot of it.
    root = f"s3://{cfg.bucket}"
    requests = load_requests_uri(store, join(demo.world_uri, "requests.jsonl"))
    added = RequestQueue(store, root).submit(requests, skip_known=True)
    echo(f"queue   {len(added)} new erasure requests queued ({len(requests)} in the demo world)")
    lineage = Lineage(run_id, settings=cfg)
    ctx = RunContext(run_id, join(root, "runs", run_id), store, lineage)
    split = run_split(demo_split_config(demo.world_uri), ctx)
    echo(f"split   {split.uri}: " + ", ".join(f"{n} {i.records}" for n, i in split.sets.items()))
    traced = run_trace(demo_trace_config(), ctx, demo.model_uri, split)
    echo(f"trace   {traced.counts.get('traced', 0)} facts traced; layers {traced.layers} ({traced.rule})")
    echo(f"trace   heatmaps: {join(traced.uri, 'heatmaps')}")
    unlearned = run_unlearn(demo_unlearn_config(), ctx, demo.model_uri, split, traced.layers)
    echo(
        f"unlearn {unlearned.method} on the MLPs of layers {unlearned.layers}: {unlearned.trainable_params:,} of "
        f"{unlearned.total_params:,} parameters, {unlearned.steps} steps ({unlearned.stopped})"
    )
    b, a = unlearned.before, unlearned.after
    echo(
        f"unlearn forget items reproduced {b['forget_exact']:.0%} -> {a['forget_exact']:.0%}; "
        f"held-out retain items {b['retain_exact']:.0%} -> {a['retain_exact']:.0%}"
    )
    echo(f"unlearn candidate model: {unlearned.uri}; curves: {join(unlearned.report_uri, 'curves.png')}")
    eval_cfg = demo_evaluate_config(demo.world_uri)
    base = run_evaluate(eval_cfg, ctx, demo.model_uri, split, "base")
    candidate = run_evaluate(eval_cfg, ctx, unlearned.uri, split, "candidate")
    echo(
        f"eval    base {'reused from ' + base.uri if base.cached else 'scored'} ({base.seconds:.0f}s); candidate scored"
    )
    b_scores, c_scores = scores(base), scores(candidate)
    for name in (
        "forget_score",
        "retain_score",
        "held_out_retain_score",
        "task_aggregate",
        "mia_score",
        "mmlu",
        "final",
    ):
        echo(f"eval    {name:<22} {b_scores[name]:.3f} -> {c_scores[name]:.3f}")
    verdict = run_gate(GateConfig(), ctx, base, candidate, traced, unlearned)
    echo(f"gate    {'PASS' if verdict.passed else 'FAIL'}: " + "; ".join(verdict.reasons))
    echo(f"report  {join(verdict.report_uri, 'report.html')}")
    with lineage.stage("prepare") as run:
        run.log_params(
            {
                "demo_key": demo.key,
                "world_uri": demo.world_uri,
                "world_digest": demo.world_digest,
                "base_model_uri": demo.model_uri,
                "base_model_digest": demo.model_digest,
            }
        )
        by_split = demo.memorisation["by_split"]
        run.log_metrics({f"base_{split}_{k}": v for split, m in by_split.items() for k, v in m.items()})  # type: ignore[union-attr]
    lineage.close("succeeded")
    echo(
        f"mlflow  run {lineage.parent_run_id()} in experiment '{cfg.experiment}': "
        f"{state.tracking_uri}/#/experiments/{lineage.experiment_id}"
    )

    if not keep_stack and not was_running:
        stack.down(settings.home)
        echo("stack   stopped")
    return {
        "demo": demo.model_dump(),
        "split": split.model_dump(),
        "trace": traced.model_dump(),
        "unlearn": unlearned.model_dump(),
        "base": base.model_dump(),
        "candidate": candidate.model_dump(),
        "gate": verdict.model_dump(),
        "parent_run_id": lineage.parent_run_id(),
    }
