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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amnesia.core.config import ModelConfig, config_hash
from amnesia.core.errors import AmnesiaError
from amnesia.results.search import SearchResult
from amnesia.results.split import SplitResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.architecture import inspect_model
from amnesia.science.plots import curves
from amnesia.science.unlearning import distributed
from amnesia.science.unlearning.adapters import adapted_modules, add_lora, merge_lora
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
    search: SearchResult | None = None,
) -> UnlearnResult:
    """The stage. With unlearn.processes > 1 outside torchrun, on that many torchrun processes started
    here; under torchrun, this process's part of it (every process returns the result; rank 0 writes
    the model, the checkpoints and the lineage). `search`: the settings search that chose cfg's settings,
    recorded with the model."""
    from amnesia.stages.unlearn import launch
    n = launch.processes(cfg)
    if n > 1 and not distributed.under_torchrun():
        return launch.launch(cfg, ctx, as_model_config(model), split, trace_layers, n, search)
    with distributed.session() as world:
        if not world.main:  # one voice in the log: rank 0's
            ctx.log.setLevel(logging.WARNING)
        return _unlearn(cfg, ctx, as_model_config(model), split, trace_layers, world, search)


@dataclass
class Prepared:
    """What every training run on this model and split shares: the loaded model with only the chosen layers'
    tensors trainable, and the encoded sets (a search's trials reuse it; each restores the start weights)."""

    model: torch.nn.Module
    tokenizer: Any
    where: Placement
    digest: str | None
    layers: list[int]
    names: list[str]
    sets: dict[str, list[Any]]
    extra: dict[str, list[Any]]


def prepare(
    cfg: UnlearnConfig, ctx: RunContext, model_cfg: ModelConfig, split: SplitResult, trace_layers: list[int] | None
) -> Prepared:
    layers = choose_layers(cfg, trace_layers)
    loaded, where = load(model_cfg, training=True, store=ctx.store)
    model, tokenizer = loaded.model, loaded.tokenizer
    names = select_trainable(model, cfg, layers)
    sets = {n: _encode_set(ctx, split, n, tokenizer, cfg) for n in split.sets if not n.startswith("mia")}
    extra = _method_sets(ctx, method_class(cfg.method).record_files(cfg.method_config()), sets, tokenizer, cfg)
    return Prepared(model, tokenizer, where, loaded.digest, layers, names, sets, extra)


def select_trainable(model: torch.nn.Module, cfg: UnlearnConfig, layers: list[int]) -> list[str]:
    """Freeze all but what trains and return its names: the selection's own tensors, or (unlearn.adapter)
    LoRA adapters put on the selection's Linear modules, seeded by unlearn.seed."""
    names = trainable_names(model, inspect_model(model), cfg.target, layers, cfg.param_regex)
    if cfg.adapter is not None:
        a = cfg.adapter
        names = add_lora(model, adapted_modules(model, names, a.modules), a.rank, a.alpha, a.dropout, cfg.seed)
    freeze_all_but(model, names)
    return names


def trainer_for(
    cfg: UnlearnConfig,
    prep: Prepared,
    forward: torch.nn.Module,
    reference: torch.nn.Module | None,
    checkpoints: CheckpointStore | None = None,
    world: distributed.World = distributed.ONE,
    **hooks: Any,
) -> Trainer:
    """A trainer for `cfg` over the prepared model and sets (forward: the model, or its DDP/FSDP wrapper)."""
    pad = prep.tokenizer.pad_token_id
    mcfg, cls = cfg.method_config(), method_class(cfg.method)
    sets = prep.sets
    data = PairedBatches(
        sets["forget_train"], sets["retain_train"], cfg.batch_size, cfg.seed, pad, cfg.retain_batch_size, prep.extra
    )
    data = cls.schedule(mcfg, data, cfg.epochs)
    held_out = held_out_batches(
        sets["forget_eval"], sets["retain_eval"] or sets["retain_train"], sets["forget_train"], cfg.batch_size, pad
    )
    named = dict(prep.model.named_parameters())  # after sharding: FSDP2 replaces the parameters it shards
    method = cls(mcfg, forward, [named[n] for n in prep.names], reference=reference, layers=prep.layers)
    return Trainer(cfg, method, forward, prep.names, data, held_out, checkpoints, world=world, **hooks)


def reference_for(cfg: UnlearnConfig, model: torch.nn.Module) -> torch.nn.Module | None:
    """A frozen copy of the start model, for the methods that compare against it."""
    return _frozen_copy(model) if method_class(cfg.method).wants_reference(cfg.method_config()) else None


def _unlearn(
    cfg: UnlearnConfig,
    ctx: RunContext,
    model_cfg: ModelConfig,
    split: SplitResult,
    trace_layers: list[int] | None,
    world: distributed.World,
    search: SearchResult | None = None,
) -> UnlearnResult:
    if cfg.search is not None:
        raise UnlearnError("unlearn.search: run the settings search first (amnesia.stages.search), then this stage "
                           "with the chosen settings (UnlearnConfig.with_settings)")  # fmt: skip
    prep = prepare(cfg, ctx, model_cfg, split, trace_layers)
    model, tokenizer, where, layers, names = prep.model, prep.tokenizer, prep.where, prep.layers, prep.names
    ctx.log.info(
        "unlearn: model on %s in %s (precision %s)%s", where.device, where.dtype, cfg.precision,
        f"; {world.size} processes, {cfg.strategy}" if distributed.active() else "",
    )  # fmt: skip
    reference = reference_for(cfg, model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen early layers would otherwise cut the graph
    forward = distributed.parallelize(model, names, cfg.strategy, torch.device(where.device))
    params = [dict(model.named_parameters())[n] for n in names]
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
        fingerprint(cfg, prep.digest, split.digest, names),
        cfg.keep_checkpoints,
    )
    lineage = ctx.lineage if world.main else None
    # The stage's MLflow run is open while training runs, so its curves show up live (batched).
    with lineage.stage("unlearn") if lineage is not None else nullcontext() as run:
        live = LiveSeries(run) if run is not None else None
        trainer = trainer_for(
            cfg,
            prep,
            forward,
            reference,
            ckpts,
            world,
            on_checkpoint=lambda step, uri: ctx.log.info("unlearn: checkpoint at step %d: %s", step, uri),
            on_record=(lambda kind, row: live.add(row, "eval_" if kind == "eval" else "")) if live else None,
        )
        state = trainer.train()
        after = trainer.evaluate(state.step)
        trained = count(params)
        if cfg.adapter is not None:  # saved merged: an ordinary model, its own tensor names (a collective)
            ctx.log.info("unlearn: %d LoRA adapters merged into their weights", merge_lora(model))
        weights = distributed.whole_state(model)
        result = None
        if world.main:
            result = _store(
                cfg, ctx, model, weights, tokenizer, state, after, layers, names, prep.digest, model_cfg, search,
                trained,
            )  # fmt: skip
        result = distributed.from_main(result)
        if run is not None and live is not None:
            live.flush()
            _record_lineage(cfg, ctx, run, result, state, model_cfg, where, prep.digest, names)
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
    search: SearchResult | None = None,
    trainable: int = 0,
) -> UnlearnResult:
    total = count(list(model.parameters()))
    summary = {
        "method": cfg.method,
        "method_args": cfg.method_config().model_dump(mode="json"),
        "config_hash": config_hash(cfg),
        "layers": layers,
        "target": cfg.target,
        "adapter": cfg.adapter.model_dump(mode="json") if cfg.adapter is not None else None,
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
        "search": search.model_dump(mode="json") if search is not None else None,
    }
    if state.phase_ends:  # how each phase of a phased method (UNDO) ended
        summary["phases"] = state.phase_ends
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
        title = f"{cfg.method} on {cfg.target} of layers {layers}"
        curves(state.history, state.evals, title, report / L.CURVES_PNG, [e["step"] for e in state.phase_ends])
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
        search=search,
        phases=state.phase_ends,
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
