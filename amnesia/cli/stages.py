"""One command per stage (`amnesia split|trace|unlearn|evaluate`), each run on its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from amnesia.cli.base import STANDALONE, cli, client_settings
from amnesia.storage import layout as L

# ---------------------------------------------------------------- stages


def _run_id(run_id: str | None) -> str:
    import time
    import uuid

    return run_id or f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _stage_options(section: str) -> Any:
    """The options every stage command shares: its run config section, run id, store root, tracking."""

    def wrap(func: Any) -> Any:
        for option in reversed(
            [
                click.option(
                    "--config",
                    "config_path",
                    type=click.Path(exists=True, path_type=Path),
                    required=True,
                    help=f"Run config YAML; its `{section}:` section is used.",
                ),
                click.option("--run-id", help="Pipeline run id (default: a new one)."),
                click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>)."),
                click.option("--no-track", is_flag=True, help="Do not record lineage in MLflow."),
            ]
        ):
            func = option(func)
        return func

    return wrap


def _model_section(config_path: Path, uri: str | None) -> Any:
    """The run config's `model:` section (a URI or a mapping), with --model overriding its uri."""
    from amnesia.core.config import ModelConfig, load_yaml, parse_model

    cfg = parse_model(ModelConfig, load_yaml(config_path).get("model", {}), f"{config_path}: model")
    cfg = cfg.model_copy(update={"uri": uri}) if uri else cfg
    if not cfg.uri:
        raise click.UsageError(f"no model: pass --model or set model.uri in {config_path}")
    return cfg


def _stage_setup(
    section: str, model: Any, config_path: Path, run_id: str | None, root: str | None, no_track: bool
) -> tuple[Any, Any]:
    """The validated config section and a RunContext (lineage on unless --no-track)."""
    from amnesia.core.config import load_yaml, parse_model
    from amnesia.storage.context import RunContext

    cfg = parse_model(model, load_yaml(config_path).get(section, {}), f"{config_path}: {section}")
    ctx = RunContext.create(_run_id(run_id), root, settings=client_settings(), track=not no_track)
    if ctx.lineage is not None:
        STANDALONE.append(ctx.lineage)
    return cfg, ctx


@cli.command("split")
@_stage_options("split")
def split_cmd(config_path: Path, run_id: str | None, root: str | None, no_track: bool) -> None:
    """Stage 1: erasure requests (or SemEval files) into validated forget / retain / MIA sets."""
    from amnesia.stages.split.config import SplitConfig
    from amnesia.stages.split.stage import run_split

    cfg, ctx = _stage_setup("split", SplitConfig, config_path, run_id, root, no_track)
    result = run_split(cfg, ctx)
    click.echo(f"split {ctx.pipeline_run_id}: {result.uri} (digest {result.digest[:16]}…)")
    for name, info in result.sets.items():
        click.echo(f"  {name:<15} {info.records:>6} records  {info.documents:>5} documents  sha256 {info.sha256[:12]}…")
    if result.request_digest:
        click.echo(f"  requests        {len(result.request_ids)} (digest {result.request_digest[:16]}…)")
    for code, count in result.warnings.items():
        click.echo(f"  warning         {code}: {count}")


@cli.command("trace")
@_stage_options("trace")
@click.option(
    "--model", "model_uri", help="Base model (local folder, s3:// URI or hub id); default: the config's model.uri."
)
@click.option("--split", "split_uri", required=True, help="The split stage's folder (s3://…/split).")
def trace_cmd(
    config_path: Path, run_id: str | None, root: str | None, no_track: bool, model_uri: str | None, split_uri: str
) -> None:
    """Stage 2: causal tracing of the forget facts; prints the chosen layers and where the heatmaps are."""
    from amnesia.results.split import load_split_result
    from amnesia.stages.trace.config import TraceConfig
    from amnesia.stages.trace.stage import run_trace

    cfg, ctx = _stage_setup("trace", TraceConfig, config_path, run_id, root, no_track)
    result = run_trace(cfg, ctx, _model_section(config_path, model_uri), load_split_result(ctx.store, split_uri))
    click.echo(f"trace {ctx.pipeline_run_id}: {result.uri} (digest {result.digest[:16]}…)")
    click.echo("  facts     " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())))
    effects = " ".join(f"{x:+.3f}" for x in result.effect)
    if result.group:
        click.echo(f"  effect    MLP at the {result.group}, per layer: {effects}")
    sure = f", confidence {result.confidence:.1f}" if result.confidence is not None else ""
    click.echo(f"  layers    {result.layers} ({result.rule}{sure}; {result.method} tracing)")
    if result.warning:
        click.echo(f"  WARNING   {result.warning}")
    for uri in result.heatmaps:
        click.echo(f"  heatmap   {uri}")


@cli.command("unlearn")
@_stage_options("unlearn")
@click.option(
    "--model", "model_uri", help="Base model (local folder, s3:// URI or hub id); default: the config's model.uri."
)
@click.option("--split", "split_uri", required=True, help="The split stage's folder (s3://…/split).")
@click.option("--trace", "trace_uri", help="The trace stage's folder: its layers (unless unlearn.layers is set).")
def unlearn_cmd(
    config_path: Path,
    run_id: str | None,
    root: str | None,
    no_track: bool,
    model_uri: str | None,
    split_uri: str,
    trace_uri: str | None,
) -> None:
    """Stage 3: train only the selected layers to forget; resumes from the run's last checkpoint."""
    from amnesia.core.config import load_yaml, parse_model
    from amnesia.results.split import load_split_result
    from amnesia.results.trace import TraceResult
    from amnesia.stages.evaluate.config import EvaluateConfig
    from amnesia.stages.gate.config import GateConfig
    from amnesia.stages.search.stage import search_then_unlearn
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.storage.uri import join

    cfg, ctx = _stage_setup("unlearn", UnlearnConfig, config_path, run_id, root, no_track)
    layers = TraceResult.load(ctx.store, trace_uri).layers if trace_uri else None
    model = _model_section(config_path, model_uri)
    sections = load_yaml(config_path)  # with unlearn.search, trials are scored as evaluate and gate will score
    evaluate = parse_model(EvaluateConfig, sections.get("evaluate", {}), f"{config_path}: evaluate")
    gate = parse_model(GateConfig, sections.get("gate", {}), f"{config_path}: gate")
    result = search_then_unlearn(cfg, ctx, model, load_split_result(ctx.store, split_uri), layers, evaluate, gate)
    click.echo(f"unlearn {ctx.pipeline_run_id}: {result.uri} (digest {result.digest[:16]}…)")
    click.echo(
        f"  method    {result.method} on {result.target} of layers {result.layers}: "
        f"{result.trainable_params:,} of {result.total_params:,} parameters trained"
    )
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    click.echo(f"  steps     {result.steps} ({result.stopped}; kept step {result.best_step}{resumed})")
    for key in ("forget_exact", "retain_exact"):
        click.echo(f"  {key:<13} {result.before[key]:.3f} -> {result.after[key]:.3f}")
    click.echo(f"  curves    {join(result.report_uri, L.CURVES_PNG)}")
    if result.search is not None:
        click.echo(f"  search    {result.search.line()}")
        click.echo(f"            {join(result.search.uri, L.SEARCH_MD)}")


@cli.command("evaluate")
@_stage_options("evaluate")
@click.option(
    "--model", "model_uri", help="Base model (local folder, s3:// URI or hub id); default: the config's model.uri."
)
@click.option("--candidate", "candidate_uri", help="The unlearned model; given, the gate runs on the pair.")
@click.option("--split", "split_uri", required=True, help="The split stage's folder (s3://…/split).")
@click.option("--trace", "trace_uri", help="The trace stage's folder (its heatmaps go into the report).")
def evaluate_cmd(
    config_path: Path,
    run_id: str | None,
    root: str | None,
    no_track: bool,
    model_uri: str | None,
    candidate_uri: str | None,
    split_uri: str,
    trace_uri: str | None,
) -> None:
    """Stage 4 (and 5): the SemEval scorer's metrics, MIA and MMLU; with --candidate, the gate and the
    report. Exit status 3 when the candidate fails the gate."""
    from amnesia.core.config import load_yaml, parse_model
    from amnesia.core.errors import ConfigError
    from amnesia.results.figures import scores
    from amnesia.results.split import load_split_result
    from amnesia.results.trace import TraceResult
    from amnesia.stages.evaluate.config import EvaluateConfig
    from amnesia.stages.evaluate.stage import run_evaluate
    from amnesia.stages.gate.config import GateConfig
    from amnesia.stages.gate.stage import run_gate
    from amnesia.storage.uri import join

    cfg, ctx = _stage_setup("evaluate", EvaluateConfig, config_path, run_id, root, no_track)
    gate_cfg = parse_model(GateConfig, load_yaml(config_path).get("gate", {}), f"{config_path}: gate")
    if candidate_uri and (problem := gate_cfg.unmeasured(cfg)):  # before two evaluations, not after
        raise ConfigError(f"{config_path}: gate.{problem}")
    split = load_split_result(ctx.store, split_uri)
    model = _model_section(config_path, model_uri)
    evals = [run_evaluate(cfg, ctx, model, split, "base")]
    if candidate_uri:
        evals.append(run_evaluate(cfg, ctx, model.model_copy(update={"uri": candidate_uri}), split, "candidate"))
    click.echo(
        f"evaluate {ctx.pipeline_run_id}: "
        + "  ".join(f"{e.role} {e.uri}{' (reused)' if e.cached else ''}" for e in evals)
    )
    table = [scores(e) for e in evals]
    click.echo(f"  {'metric':<38}" + "".join(f"{e.role:>11}" for e in evals))
    for name in table[0]:
        cells = "".join("        –  " if t.get(name) is None else f"{t[name]:>11.3f}" for t in table)
        click.echo(f"  {name:<38}{cells}")
    if not candidate_uri:
        return
    trace = None
    if trace_uri:
        trace = TraceResult.load(ctx.store, trace_uri)
    verdict = run_gate(gate_cfg, ctx, evals[0], evals[1], trace)
    click.echo(f"gate    {'PASS' if verdict.passed else 'FAIL'}")
    for reason in verdict.reasons:
        click.echo(f"  {reason}")
    click.echo(f"report  {join(verdict.report_uri, L.REPORT_HTML)}")
    if not verdict.passed:
        sys.exit(3)


