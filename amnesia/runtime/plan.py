"""Where a run starts and what it must keep, decided at run time (preflight), so a recurring run on a cluster
reads the champion of the day, not the one of the day it was scheduled.

- incremental: from `models:/<name>@champion`, pinned by version and digest, once its chain re-verifies
  and its original model is this config's model;
- cumulative: from the original model, with every standing obligation's request forgotten again;
- original: from the original model, this run's requests only.

In every mode the candidate is checked against the standing obligations (a sample when there are many),
and the relative floors are taken against the original model, never against the last champion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amnesia.core.config import HistoryConfig, ModelConfig
from amnesia.core.errors import AmnesiaError
from amnesia.results.plan import ObligationRef, RunPlan
from amnesia.storage import layout as L
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.obligations import ACTIVE, ObligationStore


class PlanError(AmnesiaError):
    """The run cannot start where it was asked to; the message names the setting or version."""


def model_digest(ctx: RunContext, uri: str) -> str | None:
    """A model folder's digest without downloading it: its manifest's for s3://, hashed for a local folder."""
    from amnesia.storage import models

    if uri.startswith("s3://"):
        return ctx.store.read_manifest(uri).digest
    return models._folder_digest(Path(uri)) if Path(uri).is_dir() else None


def _verified_champion(ctx: RunContext, name: str, version: str, original_digest: str | None) -> tuple[str, str]:
    """(source URI, digest) of a champion whose whole chain re-verifies and whose original is ours."""
    from amnesia.core.settings import settings
    from amnesia.governance.audit import audit
    from amnesia.governance.versions import get_version, registry_client

    s = ctx.lineage.settings if ctx.lineage is not None else settings()
    mv = get_version(registry_client(s), name, version)
    tags = mv.tags or {}
    checked = audit(s, ctx.store, name, version)
    broken = [link for link in checked.links if not link.ok]
    if broken:
        raise PlanError(
            f"start: {name} version {version} (champion) does not re-verify at '{broken[0].step}'; "
            f"see `amnesia audit {name} {version}`"
        )
    recorded = tags.get(Tag.ORIGINAL_MODEL_DIGEST) or tags.get(Tag.BASE_MODEL_DIGEST)
    if original_digest and recorded and recorded != original_digest:
        raise PlanError(
            f"start: {name} version {version} (champion) was made from another original model "
            f"({recorded[:12]}…, this config's model.uri is {original_digest[:12]}…)"
        )
    return str(mv.source), tags.get(Tag.MODEL_DIGEST, "")


def make_plan(ctx: RunContext, model: ModelConfig, model_name: str, history: HistoryConfig) -> RunPlan:
    original_digest = model_digest(ctx, model.uri)
    plan = RunPlan.none(model_name, model.uri).model_copy(
        update={"original_digest": original_digest, "start_digest": original_digest}
    )
    plan = plan.model_copy(update={"obligation_retention_days": history.retention_days})
    if ctx.lineage is None:
        if history.start in ("incremental", "cumulative"):
            raise PlanError(f"start: {history.start} needs MLflow (the registry holds the champion and its history)")
        return plan
    from amnesia.governance.versions import champion_of, registry_client

    champion = champion_of(registry_client(ctx.lineage.settings), model_name)
    mode = history.start if history.start != "auto" else ("incremental" if champion else "original")
    if mode == "incremental" and champion is None:
        raise PlanError(f"start: incremental needs a champion of {model_name}; none is approved yet (start: original)")
    update: dict[str, Any] = {"mode": mode, "champion": champion}
    if mode == "incremental":
        assert champion is not None
        uri, digest = _verified_champion(ctx, model_name, champion, original_digest)
        update |= {"start_uri": uri, "start_digest": digest, "start_version": champion}
    obligations = ObligationStore(ctx.store, L.store_root(ctx.root), model_name)
    ended_now = obligations.expire()
    chosen = obligations.select(history.sample, history.full_every, seed=ctx.pipeline_run_id)
    active = {o.request_id: o for o in obligations.list(ACTIVE)}
    update |= {
        "obligations": [ObligationRef(request_id=r, documents=active[r].documents, items=active[r].items,
                                      fulfilled_by=active[r].fulfilled_by) for r in chosen.checked],  # fmt: skip
        "earlier": sorted(active),
        "earlier_documents": sorted({d for o in active.values() for d in o.documents}),
        "not_checked": chosen.not_checked,
        "ended": sorted(o.request_id for o in obligations.list("ended")),
        "sampling": chosen.why if active else "no obligations yet",
        "full_check": chosen.full,
        "obligation_retention_days": history.retention_days,
    }
    plan = plan.model_copy(update=update)
    for rid in ended_now:
        ctx.log.info("plan: obligation %s ended (retention); its checks stop", rid)
    ctx.log.info("plan: %s from %s; %s", mode, f"{model_name} v{champion}" if mode == "incremental" else "the original",
                 plan.sampling)  # fmt: skip
    return plan


def store_plan(ctx: RunContext, plan: RunPlan) -> str:
    """The plan beside the preflight probe (ids and digests only); its URI."""
    uri = L.stage_uri(ctx.root, "preflight", L.PLAN)
    ctx.store.put_json(plan.model_dump(mode="json"), uri)
    return uri
