"""`amnesia attack NAME VERSION`: the attacks on forgetting, run on demand on a registered version: with
stronger settings than the pipeline's CI-sized defaults (an audit's 200 relearning steps), or attacks
added since it was registered.

Both the base model and the version are attacked on the forget set the version was made from (the split
its tags name), so the recovery has its parts and the base model's attacked figures are the ceiling.
The per-item scores (ids and numbers, no text) and the figures go to the store, under
`<root>/attacks/<name>/v<version>/<time>/`; MLflow gets a run with the recoveries, and the version a tag
`amnesia.attack.<time>` naming the folder and its digest, which `amnesia audit` re-hashes like every other link.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from amnesia.core.config import ModelConfig
from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.governance.versions import ATTACK_PREFIX, PURGE_PREFIX, get_version, registry_client
from amnesia.results.gate import Check
from amnesia.science.attack_config import AttackConfig
from amnesia.science.metrics.registry import attack_recoveries, worst_recoveries
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Guard, Tag, code_version
from amnesia.storage.uri import join


class AttackError(AmnesiaError):
    """The version cannot be attacked as asked (its lineage lacks what the attack needs)."""


class AttackRun(BaseModel):
    name: str
    version: str
    uri: str
    digest: str
    config: dict[str, Any]  # the attacks' settings
    figures: dict[str, dict[str, dict[str, float]]]  # role (base, candidate) -> variant -> metric -> mean
    recoveries: dict[str, float]  # recovery.<variant>.<metric>
    worst: dict[str, float | None]  # quantization_recovery, relearning_recovery
    checks: list[Check]  # the worst recoveries against the configured ceilings
    seconds: float


def attack_version(
    settings: Settings,
    store: ArtifactStore,
    root: str,
    name: str,
    version: str,
    cfg: AttackConfig,
    model: ModelConfig,
    evaluate: EvaluateConfig,
    gate: GateConfig,
    log: Any,
) -> AttackRun:
    """Attack the base model and the version on the version's forget set; store, record, return."""
    from amnesia.results.split import load_split_result
    from amnesia.stages.evaluate.stage import attack_figures, score_items
    from amnesia.storage.models import load
    from amnesia.storage.records import load_records

    t0 = time.monotonic()
    client = registry_client(settings)
    mv = get_version(client, name, version)
    tags = mv.tags or {}
    split_uri, base_uri = tags.get(Tag.SPLIT_URI), tags.get(Tag.BASE_MODEL_URI)
    if not split_uri or not base_uri:
        raise AttackError(f"{name} v{version}: its tags name no split or base model; nothing to attack against")
    purged = sorted(k.removeprefix(PURGE_PREFIX) for k in tags if k.startswith(PURGE_PREFIX))
    if purged:
        raise AttackError(f"{name} v{version}: forget sets purged ({purged[0]}): nothing to attack with")
    split = load_split_result(store, split_uri)
    forget = [
        r
        for n in ("forget_train", "forget_eval")
        for r in load_records(split.sets[n].uri, allow_empty=True, store=store)
    ]
    ecfg = evaluate.model_copy(update={"attacks": cfg})
    figures: dict[str, dict[str, dict[str, float]]] = {}
    rows: list[dict[str, Any]] = []
    for role, uri in (("base", base_uri), ("candidate", mv.source)):
        loaded, _where = load(model.model_copy(update={"uri": uri}), store=store)
        plain = score_items(loaded.model, loaded.tokenizer, forget, ecfg)[1]
        figures[role], attacked = attack_figures(ecfg, loaded.model, loaded.tokenizer, forget, plain, role, log)
        rows += [{"role": role} | r for r in attacked]
        del loaded
    rec = attack_recoveries(figures["base"], figures["candidate"])
    worst = worst_recoveries(rec)
    bounds = {"quantization_recovery": gate.quantization_recovery_ceiling,
              "relearning_recovery": gate.relearning_recovery_ceiling}  # fmt: skip
    checks = [
        Check(name=k, value=worst[k], floor=b, ceiling=True, passed=worst[k] is not None and worst[k] <= b)
        for k, b in bounds.items()
        if b is not None
    ]
    stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"  # sorts by time, never collides
    uri = join(root, L.ATTACKS, name, f"v{version}", stamp)
    result = AttackRun(
        name=name, version=str(version), uri=uri, digest="", config=cfg.model_dump(), figures=figures,
        recoveries=rec, worst=worst, checks=checks, seconds=round(time.monotonic() - t0, 1),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / L.RESULT).write_text(result.model_dump_json(indent=1))
        (folder / L.ATTACK_ITEMS).write_text("".join(json.dumps(r) + "\n" for r in rows))
        result.digest = store.put_dir(folder, uri).digest
    _record(settings, client, mv, result)
    return result


def _record(settings: Settings, client: Any, mv: Any, result: AttackRun) -> None:
    """An MLflow run with the recoveries, and the folder's uri#digest appended to the version's tag."""
    guard = Guard()
    exp = client.get_experiment_by_name(settings.experiment)
    experiment = exp.experiment_id if exp else client.create_experiment(settings.experiment)
    run_tags = {Tag.ROLE: "attack", "amnesia.model_name": mv.name, "amnesia.model_version": str(mv.version),
                "amnesia.attack_uri": result.uri, "amnesia.attack_digest": result.digest,
                Tag.CODE_VERSION: code_version()}  # fmt: skip
    run = client.create_run(
        experiment,
        tags={"mlflow.runName": f"attack-{mv.name}-v{mv.version}"}
        | {k: guard.check("tag", k, v) for k, v in run_tags.items()},
    )
    figures = result.recoveries | {k: v for k, v in result.worst.items() if v is not None}
    for key, value in sorted(figures.items()):
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    key = ATTACK_PREFIX + result.uri.rsplit("/", 1)[1]  # one tag per run, named by its time
    client.set_model_version_tag(mv.name, mv.version, key, guard.check("tag", key, f"{result.uri}#{result.digest}"))
