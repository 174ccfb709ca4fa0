"""The head of the DAG: check in seconds what would otherwise fail after minutes of compute, and say it in
one line naming the field or URI. Nothing here is retried: these failures are not transient.

Checked: the store is reachable and writable under the run's folder; MLflow answers (the run's parent is
opened here, so lineage exists before any output); the base model folder holds a config, safetensors
weights and a tokenizer (read from its manifest for an s3:// folder: nothing is downloaded); the split's
data files and the MMLU source exist. Hub ids are not checked (no hub from here; the stage that loads
them says so). Like every task, it runs inside the error boundary (amnesia.runtime.boundary).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from amnesia.core.config import HistoryConfig, ModelConfig
from amnesia.core.errors import AmnesiaError
from amnesia.results.plan import RunPlan
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.split.config import SplitConfig
from amnesia.storage.context import RunContext
from amnesia.storage.models import TOKENIZER_FILES
from amnesia.storage.uri import MANIFEST_NAME, join


class PreflightError(AmnesiaError):
    """A check before any compute failed; the message names what to fix."""


class Preflight(BaseModel):
    checks: list[str]  # what was checked, in order (for the log and the run record)
    plan: RunPlan  # where the run starts, and the obligations it is checked against


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".yaml", ".yml", ".csv")


def _local_or_s3(uri: str) -> bool:
    """Not a hub id: an s3:// URI, a path that exists or looks like one (a file name)."""
    return uri.startswith(("s3://", "/", ".")) or uri.endswith(_FILE_SUFFIXES) or Path(uri).exists()


def _exists(ctx: RunContext, field: str, uri: str) -> str:
    if not _local_or_s3(uri):
        return f"{field}: {uri} (a hub id: checked when loaded)"
    if not (ctx.store.exists(uri) or ctx.store.list(uri)):  # a file or object, or a folder of them
        raise PreflightError(f"{field}: {uri} does not exist")
    return f"{field}: {uri}"


def _model(ctx: RunContext, model: ModelConfig) -> str:
    uri = model.uri
    if not uri.strip():
        raise PreflightError("model.uri: no model given (a local folder, an s3:// folder or a hub id)")
    if not _local_or_s3(uri):
        return f"model.uri: {uri} (a hub id: checked when loaded)"
    if uri.startswith("s3://"):
        manifest_uri = join(uri, MANIFEST_NAME)
        if not ctx.store.exists(manifest_uri):
            raise PreflightError(f"model.uri: {uri}: no {MANIFEST_NAME} (not a model folder stored by amnesia)")
        names = {Path(e.path).name for e in ctx.store.read_manifest(uri).files}
    else:
        folder = Path(uri)
        if not folder.is_dir():
            raise PreflightError(f"model.uri: {uri}: no such model folder")
        names = {p.name for p in folder.iterdir()}
    missing = [what for what, ok in (
        ("config.json", "config.json" in names),
        ("*.safetensors weights", any(n.endswith(".safetensors") for n in names)),
        (f"tokenizer ({TOKENIZER_FILES[0]} / {TOKENIZER_FILES[1]})", any(n in names for n in TOKENIZER_FILES)),
    ) if not ok]  # fmt: skip
    if missing:
        raise PreflightError(f"model.uri: {uri}: no {', no '.join(missing)}")
    return f"model.uri: {uri}"


def _writable(ctx: RunContext) -> str:
    probe = join(ctx.root, "preflight", "probe.txt")
    ctx.store.put_bytes(b"ok\n", probe)
    if ctx.store.get_bytes(probe) != b"ok\n":
        raise PreflightError(f"store: {probe} did not read back what was written")
    return f"store: {ctx.root} writable"


def run_preflight(
    ctx: RunContext,
    model: ModelConfig,
    split: SplitConfig,
    evaluate: EvaluateConfig,
    model_name: str = "amnesia-model",
    history: HistoryConfig | None = None,
) -> Preflight:
    from amnesia.runtime.plan import make_plan, store_plan

    checks = [_writable(ctx)]
    if ctx.lineage is not None:
        ctx.lineage.check_reachable()
        ctx.lineage.parent_run_id()  # created now: every later output has its lineage
        checks.append(f"mlflow: {ctx.lineage.settings.mlflow_tracking_uri}")
    checks.append(_model(ctx, model))
    for field in ("corpus", "forget", "retain", "mia_members", "mia_nonmembers"):
        value = getattr(split, field)
        if value:
            checks.append(_exists(ctx, f"split.{field}", value))
    if split.requests and split.requests != "queue":
        checks.append(_exists(ctx, "split.requests", split.requests))
    if evaluate.mmlu is not None:
        checks.append(_exists(ctx, "evaluate.mmlu.uri", evaluate.mmlu.uri))
    plan = make_plan(ctx, model, model_name, history or HistoryConfig())
    uri = store_plan(ctx, plan)
    checks.append(f"plan: {plan.mode}, {len(plan.obligations)} of {len(plan.earlier)} obligations checked")
    if ctx.lineage is not None:
        _record_plan(ctx, plan, uri)
    for line in checks:
        ctx.log.info("preflight: %s", line)
    return Preflight(checks=checks, plan=plan)


def _record_plan(ctx: RunContext, plan: RunPlan, uri: str) -> None:
    """On the parent run: where this run starts and from which original (ids and digests only)."""
    from amnesia.storage.lineage import StageRun, Tag

    assert ctx.lineage is not None
    parent = StageRun(ctx.lineage.client, ctx.lineage.parent_run_id(), ctx.lineage.guard)
    parent.set_tags({
        Tag.START_MODE: plan.mode, Tag.START_MODEL_URI: plan.start_uri,
        Tag.START_MODEL_DIGEST: plan.start_digest or "none",
        Tag.START_VERSION: plan.start_version or "none", Tag.CHAMPION_AT_PLAN: plan.champion or "none",
        Tag.ORIGINAL_MODEL_URI: plan.original_uri, Tag.ORIGINAL_MODEL_DIGEST: plan.original_digest or "none",
        Tag.PLAN_URI: uri, Tag.OBLIGATIONS_CHECKED: len(plan.obligations),
    })  # fmt: skip


