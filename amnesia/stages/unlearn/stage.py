"""Stage 3 — unlearn: train only the traced layers' parts on the forget and retain sets with the chosen
method, and store the whole model folder (safetensors, tokenizer, config) as the candidate.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from amnesia.core.config import ModelConfig, config_hash
from amnesia.core.errors import AmnesiaError
from amnesia.results.split import SplitResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.architecture import inspect_model
from amnesia.science.plots import curves
from amnesia.science.unlearning import distributed
from amnesia.science.unlearning.data import PairedBatches, encode
from amnesia.science.unlearning.methods import method_class
from amnesia.science.unlearning.params import count, freeze_all_but, trainable_names
from amnesia.stages.unlearn.checkpoint import CheckpointStore
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.trainer import Trainer, TrainState, held_out_batches
from amnesia.storage import layout as L
from amnesia.storage import mlmodel
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import LiveSeries, StageRun, Tag
from amnesia.storage.models import Placement, as_model_config, load
from amnesia.storage.records import load_records
from amnesia.storage.uri import join


class UnlearnError(AmnesiaError):
    """The stage cannot run as configured; the message says why."""


def choose_layers(cfg: UnlearnConfig, trace_layers: list[int] | None) -> list[int]:
    if cfg.target == "regex":
        return sorted(set(cfg.layers or trace_layers or []))
    layers = cfg.layers if cfg.layers is not None else trace_layers
    if not layers:
        raise UnlearnError("no layers to unlearn: give unlearn.layers, or the trace stage's result")
    return sorted(set(layers))


def _encode_set(ctx: RunContext, split: SplitResult, name: str, tokenizer: Any, cfg: UnlearnConfig) -> list[Any]:
    records = load_records(split.sets[name].uri, allow_empty=True, store=ctx.store)
    eos = cfg.forget_eos if name.startswith("forget") else cfg.retain_eos
    return [encode(tokenizer, r, cfg.prompt_format, cfg.max_length, eos=eos) for r in records]


def _method_sets(
    ctx: RunContext, files: dict[str, str], sets: dict[str, list[Any]], tokenizer: Any, cfg: UnlearnConfig
) -> dict[str, list[Any]]:
    """The method's own record files, encoded as retain items; none may share an id with the forget set."""
    forget_ids = {e.id for n, items in sets.items() if n.startswith("forget") for e in items}
    out = {}
    for name, uri in files.items():
        records = load_records(uri, store=ctx.store)
        clash = sorted(forget_ids & {r.id for r in records})
        if clash:
            raise UnlearnError(f"unlearn.method_args: {name} records {uri} share ids with the forget set: {clash[:3]}")
        out[name] = [encode(tokenizer, r, cfg.prompt_format, cfg.max_length, eos=cfg.retain_eos) for r in records]
    return out


def fingerprint(cfg: UnlearnConfig, base_digest: str | None, split_digest: str, names: list[str]) -> str:
    """What a checkpoint must match to be resumed: the config without how many processes run it or how
    they split the model (the results do not depend on those), the base model, the data, the tensors."""
    math = config_hash(cfg.model_copy(update={"processes": 1, "strategy": "fsdp"}))
    canonical = json.dumps([math, base_digest, split_digest, names], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_unlearn(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: ModelConfig | str,
    split: SplitResult,
    trace_layers: list[int] | None = None,
) -> UnlearnResult:
    """The stage. With unlearn.processes > 1 outside torchrun, on that many torchrun processes started
    here; under torchrun, this process's part of it (every process returns the result; rank 0 writes
    the model, the checkpoints and the lineage)."""
    from amnesia.stages.unlearn import launch
    n = launch.processes(cfg)
    if n > 1 and not distributed.under_torchrun():
        return launch.launch(cfg, ctx, as_model_config(model), split, trace_layers, n)
    with distributed.session() as world:
        if not world.main:  # one voice in the log: rank 0's
            ctx.log.setLevel(logging.WARNING)
        return _unlearn(cfg, ctx, as_model_config(model), split, trace_layers, world)


def _unlearn(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model_cfg: ModelConfig,
    split: SplitResult,
    trace_layers: list[int] | None,
    world: distributed.World,
) -> UnlearnResult:
    layers = choose_layers(cfg, trace_layers)
    loaded, where = load(model_cfg, training=True, store=ctx.store)
    model, tokenizer = loaded.model, loaded.tokenizer
    ctx.log.info(
        "unlearn: model on %s in %s (precision %s)%s", where.device, where.dtype, cfg.precision,
        f"; {world.size} processes, {cfg.strategy}" if distributed.active() else "",
    )  # fmt: skip
    layout = inspect_model(model)
    names = trainable_names(model, layout, cfg.target, layers, cfg.param_regex)
    freeze_all_but(model, names)
    sets = {n: _encode_set(ctx, split, n, tokenizer, cfg) for n in split.sets if not n.startswith("mia")}
    pad = tokenizer.pad_token_id
    mcfg, cls = cfg.method_config(), method_class(cfg.method)
    extra = _method_sets(ctx, cls.record_files(mcfg), sets, tokenizer, cfg)
    data = PairedBatches(
        sets["forget_train"], sets["retain_train"], cfg.batch_size, cfg.seed, pad, cfg.retain_batch_size, extra
    )
    data = cls.schedule(mcfg, data, cfg.epochs)
    held_out = held_out_batches(
        sets["forget_eval"], sets["retain_eval"] or sets["retain_train"], sets["forget_train"], cfg.batch_size, pad
    )
    reference = _frozen_copy(model) if cls.wants_reference(mcfg) else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen early layers would otherwise cut the graph
    forward = distributed.parallelize(model, names, cfg.strategy, torch.device(where.device))
    named = dict(model.named_parameters())  # after sharding: FSDP2 replaces the parameters it shards
    params = [named[n] for n in names]
    method = cls(mcfg, forward, params, reference=reference, layers=layers)
    ctx.log.info(
        "unlearn: %s on %s of layers %s: %d of %d parameters train (%d tensors)",
        cfg.method,
        cfg.target,
        layers,
        count(params),
        count(list(model.parameters())),
        len(names),
    )
    ckpts = CheckpointStore(
        ctx.store,
        join(ctx.root, "unlearn", "checkpoints"),
        fingerprint(cfg, loaded.digest, split.digest, names),
        cfg.keep_checkpoints,
    )
    lineage = ctx.lineage if world.main else None
    # The stage's MLflow run is open while training runs, so its curves show up live (batched).
    with lineage.stage("unlearn") if lineage is not None else nullcontext() as run:
        live = LiveSeries(run) if run is not None else None
        trainer = Trainer(
            cfg,
            method,
            forward,
            names,
            data,
            held_out,
            ckpts,
            on_checkpoint=lambda step, uri: ctx.log.info("unlearn: checkpoint at step %d: %s", step, uri),
            on_record=(lambda kind, row: live.add(row, "eval_" if kind == "eval" else "")) if live else None,
            world=world,
        )
        state = trainer.train()
        after = trainer.evaluate(state.step)
        weights = distributed.whole_state(model)
        result = None
        if world.main:
            result = _store(cfg, ctx, model, weights, tokenizer, state, after, layers, names, loaded.digest, model_cfg)
        result = distributed.from_main(result)
        if run is not None and live is not None:
            live.flush()
            _record_lineage(cfg, ctx, run, result, state, model_cfg, where, loaded.digest, names)
    ctx.log.info(
        "unlearn: %d steps (%s); forget reproduced %.3f -> %.3f, retain %.3f -> %.3f",
        state.step, state.stopped, result.before["forget_exact"], after["forget_exact"],
        result.before["retain_exact"], after["retain_exact"],
    )  # fmt: skip
    return result


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _store(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor] | None,
    tokenizer: Any,
    state: TrainState,
    after: dict[str, float],
    layers: list[int],
    names: list[str],
    base_digest: str | None,
    base: ModelConfig,
) -> UnlearnResult:
    total = count(list(model.parameters()))
    trainable = count([p for n, p in model.named_parameters() if n in set(names)])
    summary = {
        "method": cfg.method,
        "method_args": cfg.method_config().model_dump(mode="json"),
        "config_hash": config_hash(cfg),
        "layers": layers,
        "target": cfg.target,
        "trainable_tensors": names,
        "trainable_params": trainable,
        "total_params": total,
        "steps": state.step,
        "stopped": state.stopped,
        "best_step": state.best_step,
        "resumed_from": state.resumed_from,
        "base_model_uri": base.uri,
        "base_model_digest": base_digest,
        "before": state.evals[0],
        "after": after,
    }
    model_uri, report_uri = L.stage_uri(ctx.root, "unlearn", "model"), L.stage_uri(ctx.root, "unlearn", "report")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder, state_dict=weights)  # safetensors; weights: gathered from shards
        tokenizer.save_pretrained(folder)
        identity = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
        mlmodel.write(folder, model, tokenizer, base.uri, identity)  # also an MLflow model (pyfunc, transformers)
        (folder / L.UNLEARN_SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
        ref = ctx.store.put_dir(folder, model_uri)
        report = Path(tmp) / "report"
        report.mkdir()
        (report / L.UNLEARN_REPORT_SUMMARY).write_text(json.dumps(summary | {"model_digest": ref.digest}, indent=1))
        (report / L.CURVES_JSON).write_text(json.dumps({"history": state.history, "evals": state.evals}))
        curves(state.history, state.evals, f"{cfg.method} on {cfg.target} of layers {layers}", report / L.CURVES_PNG)
        ctx.store.put_dir(report, report_uri)
    return UnlearnResult(
        uri=model_uri,
        digest=ref.digest,
        report_uri=report_uri,
        method=cfg.method,
        layers=layers,
        target=cfg.target,
        trainable_params=trainable,
        total_params=total,
        steps=state.step,
        stopped=state.stopped,
        best_step=state.best_step,
        resumed_from=state.resumed_from,
        before=state.evals[0],
        after=after,
        config_hash=config_hash(cfg),
    )


def _flat(prefix: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in obj.items() if v is not None}


def _record_lineage(
    cfg: UnlearnConfig,
    ctx: RunContext,
    run: StageRun,
    result: UnlearnResult,
    state: TrainState,
    mcfg: ModelConfig,
    where: Placement,
    base_digest: str | None,
    names: list[str],
) -> None:
    general = cfg.model_dump(exclude={"method_args", "layers"})
    run.log_params(
        _flat("", general)
        | _flat("method_args.", cfg.method_config().model_dump(mode="json"))
        | {"layers": ",".join(map(str, result.layers)) or "none", "trainable_tensors": len(names)}
        | where.params(mcfg)
    )
    tags = {
        Tag.CONFIG_HASH: result.config_hash,
        Tag.METHOD: cfg.method,
        Tag.LAYERS: ",".join(map(str, result.layers)),
        Tag.BASE_MODEL_URI: mcfg.uri,
        Tag.MODEL_URI: result.uri,
        Tag.MODEL_DIGEST: result.digest,
    }
    if base_digest:
        tags[Tag.BASE_MODEL_DIGEST] = base_digest
    if state.resumed_from is not None:
        tags[Tag.RESUMED_FROM] = state.resumed_from
    run.set_tags(tags)
    run.log_metrics(
        {"trainable_params": result.trainable_params, "total_params": result.total_params, "steps": result.steps}
        | {f"before_{k}": v for k, v in result.before.items() if k != "step"}
        | {f"after_{k}": v for k, v in result.after.items() if k != "step"}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in (L.CURVES_PNG, L.UNLEARN_REPORT_SUMMARY):  # summary: which tensors trained, counts, digests
            run.log_artifact(ctx.store.get_file(join(result.report_uri, name), Path(tmp) / name), "unlearn")
