"""The `amnesia` command: thin click wrappers over the library. Each stage adds its subcommand."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from amnesia import __version__
from amnesia import layout as L
from amnesia.errors import AmnesiaError
from amnesia.settings import Settings, load_settings

# Lineage opened by a stage command run on its own (`amnesia split …`): its parent run is closed when the
# command ends, so it does not stay RUNNING (in the pipeline, the exit handler closes it).
_STANDALONE: list[Any] = []


class _Group(click.Group):
    """Turns library errors into one-line messages and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        ok = False
        try:
            result = super().invoke(ctx)
            ok = True
            return result
        except AmnesiaError as err:
            raise click.ClickException(str(err)) from None
        finally:
            while _STANDALONE:
                _STANDALONE.pop().end_parent(ok)


def client_settings(home: Path | None = None) -> Settings:
    """Settings for a client command: the environment, else the local stack running in home."""
    from amnesia import stack

    base = load_settings()
    stack.activate(home or base.home)
    return load_settings()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amnesia")
def cli() -> None:
    """Selective Amnesia: make a model forget, prove it, and hand it to a person for approval."""


# ---------------------------------------------------------------- stack


@cli.group(cls=_Group)
def stack() -> None:
    """The local S3-compatible server and MLflow tracking server (127.0.0.1 only)."""


@stack.command("up")
@click.option("--owner-pid", type=int, help="Stop the stack by itself when this process ends.")
@click.option("--ttl", type=float, help="Stop the stack by itself after this many seconds.")
def stack_up(owner_pid: int | None, ttl: float | None) -> None:
    """Start the stack (or find it running) and print how to reach it."""
    from amnesia import stack as stk
    from amnesia.storage import ArtifactStore

    settings = load_settings()
    state = stk.up(settings, owner_pid=owner_pid, ttl_s=ttl)
    store = ArtifactStore(state.client_settings())
    buckets = [b["Name"] for b in store.s3.list_buckets()["Buckets"]]
    click.echo(f"S3      {state.s3_endpoint}  buckets: {', '.join(sorted(buckets))}  (SeaweedFS)")
    click.echo(f"MLflow  {state.tracking_uri}  (UI and /health; users: `amnesia stack user add NAME`)")
    click.echo(f"review  {state.review_url}  (the reviewers' page: sign in as an MLflow user)")
    click.echo(f"data    {stk.s3_dir(Path(state.home))}, {Path(state.home) / 'mlflow.db'}  (kept by `stack down`)")
    click.echo(f"access  {state.audit_log}  (`amnesia stack logs audit`)")
    click.echo(f"state   {state.home}  (`amnesia stack env` prints the variables for other shells)")


@stack.command("down")
@click.option("--purge", is_flag=True, help="Also delete the stored objects, MLflow's database and the logs.")
@click.option("--yes", is_flag=True, help="With --purge: do not ask for confirmation.")
def stack_down(purge: bool, yes: bool) -> None:
    """Stop exactly what `stack up` started. The data stays for the next `stack up` unless --purge."""
    from amnesia import stack as stk

    home = load_settings().home
    if not purge:
        stopped = stk.down(home)
        click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return
    doomed = stk.stored_data(home)
    if not doomed:
        stk.down(home)
        click.echo("nothing stored: nothing to purge")
        return
    listing = ", ".join(str(p) for p in doomed)
    if not yes and not click.confirm(f"Delete {listing}? Every object, run, model version and audit trail goes"):
        raise click.ClickException("purge cancelled: nothing was deleted")
    gone = stk.purge(home)
    click.echo(f"purged: {', '.join(str(p) for p in gone)}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def stack_status(as_json: bool) -> None:
    """Is the stack up, and where."""
    from amnesia import stack as stk

    report = stk.status(load_settings().home)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    if "s3" not in report:
        kept = " (stored data kept: `amnesia stack up` serves it again)" if report["data_present"] else ""
        click.echo(f"not running{kept}")
        return
    click.echo(f"running: {report['running']}")
    click.echo(f"S3      {report['s3']['endpoint']}  alive={report['s3']['alive']}  data={report['s3']['data']}")  # type: ignore[index]
    click.echo(f"MLflow  {report['mlflow']['tracking_uri']}  alive={report['mlflow']['alive']}")  # type: ignore[index]
    click.echo(f"review  {report['review']['url']}  alive={report['review']['alive']}")  # type: ignore[index]


@stack.command("env")
@click.option("--auditor", is_flag=True, help="The read-only auditor identity instead of the admin one.")
@click.option("--user", help="Act as this MLflow user of the stack (a reviewer: `amnesia stack user add`).")
def stack_env(auditor: bool, user: str | None) -> None:
    """Print `export` lines that point a shell at the running stack."""
    from amnesia import stack as stk

    state = stk.running(load_settings().home)
    if state is None:
        raise click.ClickException("the local stack is not running (`amnesia stack up`)")
    for key, value in state.env("auditor" if auditor else "admin", user=user).items():
        click.echo(f"export {key}={value}")


@stack.group("user", cls=_Group)
def stack_user() -> None:
    """MLflow users of the local stack: the people who review (the cluster manages its own)."""


@stack_user.command("add")
@click.argument("user")
@click.option(
    "--grant", "models", multiple=True, help="Give MANAGE on this registered model: it may decide (repeatable)."
)
def stack_user_add(user: str, models: tuple[str, ...]) -> None:
    """Make an MLflow user (idempotent) and print its password; --grant lets it decide on a model."""
    from amnesia import stack as stk

    settings = load_settings()
    password = stk.add_user(settings.home, user)
    state = stk.running(settings.home)
    assert state is not None  # add_user checked
    for model in models:
        state.mlflow_auth().grant(user, model, "MANAGE")
    click.echo(f"user {user}  password {password}" + (f"  MANAGE on {', '.join(models)}" if models else ""))


@stack_user.command("grant")
@click.argument("user")
@click.argument("model")
@click.option("--permission", type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "DENY"]), default="MANAGE",
              show_default=True, help="MLflow's permission to set (MANAGE may decide).")  # fmt: skip
def stack_user_grant(user: str, model: str, permission: str) -> None:
    """Set an MLflow user's permission on a registered model (MANAGE may decide on its versions)."""
    from amnesia import stack as stk

    state = stk.running(load_settings().home)
    if state is None:
        raise click.ClickException("the local stack is not running (`amnesia stack up`)")
    state.mlflow_auth().grant(user, model, permission)
    click.echo(f"{user}: {permission} on registered model {model}")


@stack.command("logs")
@click.argument("name", type=click.Choice(["audit", "s3", "mlflow", "review", "watchdog"]), default="audit")
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="How many of the newest lines.")
@click.option("--key", "key_part", help="audit: only requests whose object key contains this text.")
@click.option("--json", "as_json", is_flag=True, help="audit: print the records as JSON lines.")
def stack_logs(name: str, lines: int, key_part: str | None, as_json: bool) -> None:
    """Show a stack log; `audit` (the default) is the S3 access log: who read or wrote which object."""
    from collections import deque

    from amnesia import s3audit
    from amnesia import stack as stk

    path = stk.log_file(load_settings().home, name)
    if not path.exists():
        raise click.ClickException(f"{path}: no such log yet (has `amnesia stack up` run in this home?)")
    if name != "audit":
        for line in deque(path.read_text(errors="replace").splitlines(), maxlen=lines):
            click.echo(line)
        return
    records = (r for r in s3audit.read(path) if key_part is None or key_part in r.key)
    for record in deque(records, maxlen=lines):
        click.echo(record.model_dump_json() if as_json else record.line())


# ---------------------------------------------------------------- store


@cli.group(cls=_Group)
def store() -> None:
    """Files and folders in the artifact store (s3:// URIs or local paths), with manifests."""


@store.command("put")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("uri")
def store_put(src: Path, uri: str) -> None:
    """Upload a file or a folder (a folder gets a manifest, written last)."""
    from amnesia.storage import ArtifactStore

    st = ArtifactStore(client_settings())
    ref = st.put_dir(src, uri) if src.is_dir() else st.put_file(src, uri)
    click.echo(ref.model_dump_json())


@store.command("get")
@click.argument("uri")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--file", "is_file", is_flag=True, help="URI is a single file, not a folder.")
def store_get(uri: str, dst: Path, is_file: bool) -> None:
    """Download and verify a folder (or, with --file, one file)."""
    from amnesia.storage import ArtifactStore

    st = ArtifactStore(client_settings())
    if is_file:
        st.get_file(uri, dst)
        click.echo(str(dst))
    else:
        manifest = st.get_dir(uri, dst)
        click.echo(f"{dst}: {len(manifest.files)} files, digest {manifest.digest}")


@store.command("init-bucket")
@click.option("--bucket", help="Bucket name (default AMNESIA_BUCKET).")
def store_init_bucket(bucket: str | None) -> None:
    """Create the project's bucket if it does not exist (idempotent; the cluster's bucket-init Job)."""
    from amnesia.storage import ArtifactStore

    settings = load_settings()
    name = bucket or settings.bucket
    created = ArtifactStore(settings).ensure_bucket(name)
    click.echo(f"bucket {name}: {'created' if created else 'already there'}")


@store.command("s3-identities")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Where to write the file (0600).")
def store_s3_identities(out: Path) -> None:
    """Write SeaweedFS's identities file from the environment (the cluster's seaweedfs init container).

    Admin: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the pipeline's own Secret); read-only auditor, when
    set: AMNESIA_AUDITOR_ACCESS_KEY_ID / AMNESIA_AUDITOR_SECRET_ACCESS_KEY.
    """
    from amnesia import seaweed

    def cred(key_var: str, secret_var: str) -> seaweed.Credentials | None:
        key, secret = os.environ.get(key_var, "").strip(), os.environ.get(secret_var, "").strip()
        if not key and not secret:
            return None
        if not key or not secret or "CHANGE-ME" in key + secret:
            raise click.ClickException(f"set both {key_var} and {secret_var} (real values, not CHANGE-ME)")
        return seaweed.Credentials(access_key_id=key, secret_access_key=secret)

    admin = cred("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    if admin is None:
        raise click.ClickException("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
    auditor = cred("AMNESIA_AUDITOR_ACCESS_KEY_ID", "AMNESIA_AUDITOR_SECRET_ACCESS_KEY")
    ids = seaweed.Identities(admin=admin, auditor=auditor)
    seaweed.write_private(out, json.dumps(ids.document(), indent=1))
    click.echo(f"{out}: identities {', '.join(i['name'] for i in ids.document()['identities'])}")  # type: ignore[index, union-attr]


@store.command("verify")
@click.argument("uri")
def store_verify(uri: str) -> None:
    """Re-hash every object of a folder against its manifest; non-zero exit if any differs."""
    from amnesia.storage import ArtifactStore

    manifest = ArtifactStore(client_settings()).verify(uri)
    click.echo(f"ok: {len(manifest.files)} files, {manifest.size} bytes, digest {manifest.digest}")


# ---------------------------------------------------------------- demo


@cli.group(cls=_Group, invoke_without_command=True)
@click.option(
    "--keep-stack/--stop-stack",
    default=True,
    show_default=True,
    help="Leave the local stack running afterwards (to browse MLflow).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every task's whole output (else: in per-task log files).")
@click.pass_context
def demo(ctx: click.Context, keep_stack: bool, verbose: bool) -> None:
    """Run the whole story on the embedded demo world (what exists of it so far)."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.demo import run_demo

    run_demo(load_settings(), keep_stack=keep_stack, echo=click.echo, verbose=verbose)


@demo.command("prepare")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="YAML with `world:` and `train:` sections (amnesia.demo.prepare.DemoConfig).",
)
@click.option("--seed", type=int, help="Generator seed (overrides the config).")
@click.option("--root", help="Where to store it (default s3://<AMNESIA_BUCKET>).")
@click.option("--force", is_flag=True, help="Rebuild even if this content address exists.")
def demo_prepare(config_path: Path | None, seed: int | None, root: str | None, force: bool) -> None:
    """Generate the demo world and train its base model into the store (reused when unchanged)."""
    from amnesia.config import load_yaml, parse_model
    from amnesia.demo.prepare import DemoConfig, prepare, print_summary
    from amnesia.storage import ArtifactStore

    data = load_yaml(config_path) if config_path else {}
    if seed is not None:
        data.setdefault("world", {})["seed"] = seed
    cfg = parse_model(DemoConfig, data, str(config_path or "--seed"))
    settings = client_settings()
    result = prepare(cfg, ArtifactStore(settings), root or f"s3://{settings.bucket}", echo=click.echo, force=force)
    print_summary(result, click.echo)


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
    from amnesia.config import ModelConfig, load_yaml, parse_model

    cfg = parse_model(ModelConfig, load_yaml(config_path).get("model", {}), f"{config_path}: model")
    cfg = cfg.model_copy(update={"uri": uri}) if uri else cfg
    if not cfg.uri:
        raise click.UsageError(f"no model: pass --model or set model.uri in {config_path}")
    return cfg


def _stage_setup(
    section: str, model: Any, config_path: Path, run_id: str | None, root: str | None, no_track: bool
) -> tuple[Any, Any]:
    """The validated config section and a RunContext (lineage on unless --no-track)."""
    from amnesia.config import load_yaml, parse_model
    from amnesia.context import RunContext

    cfg = parse_model(model, load_yaml(config_path).get(section, {}), f"{config_path}: {section}")
    ctx = RunContext.create(_run_id(run_id), root, settings=client_settings(), track=not no_track)
    if ctx.lineage is not None:
        _STANDALONE.append(ctx.lineage)
    return cfg, ctx


@cli.command("split")
@_stage_options("split")
def split_cmd(config_path: Path, run_id: str | None, root: str | None, no_track: bool) -> None:
    """Stage 1: erasure requests (or SemEval files) into validated forget / retain / MIA sets."""
    from amnesia.config import SplitConfig
    from amnesia.split import run_split

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
    from amnesia.config import TraceConfig
    from amnesia.split import load_split_result
    from amnesia.trace import run_trace

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
    from amnesia.split import load_split_result
    from amnesia.storage import join
    from amnesia.trace import TraceResult
    from amnesia.unlearn.config import UnlearnConfig
    from amnesia.unlearn.stage import run_unlearn

    cfg, ctx = _stage_setup("unlearn", UnlearnConfig, config_path, run_id, root, no_track)
    layers = TraceResult.load(ctx.store, trace_uri).layers if trace_uri else None
    model = _model_section(config_path, model_uri)
    result = run_unlearn(cfg, ctx, model, load_split_result(ctx.store, split_uri), layers)
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
    from amnesia.config import EvaluateConfig, GateConfig, load_yaml, parse_model
    from amnesia.errors import ConfigError
    from amnesia.evaluate import run_evaluate
    from amnesia.gate import run_gate, scores
    from amnesia.split import load_split_result
    from amnesia.storage import join
    from amnesia.trace import TraceResult

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


# ---------------------------------------------------------------- the pipeline


def _pipeline_config(config_path: Path, experiment: str | None = None) -> Any:
    """The run config; `experiment` (a command's --experiment) overrides its experiment."""
    from amnesia.config import load_run_config
    from amnesia.pipeline_config import PipelineConfig

    cfg = load_run_config(config_path, PipelineConfig)
    return cfg.model_copy(update={"experiment": experiment}) if experiment else cfg


@cli.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.pipeline_config.PipelineConfig).")  # fmt: skip
@click.option("--run-id", help="Pipeline run id (default: <name>-<time>-<random>).")
@click.option("-v", "--verbose", is_flag=True, help="Show every task's whole output (else: in per-task log files).")
def run_cmd(config_path: Path, run_id: str | None, verbose: bool) -> None:
    """Run the whole DAG in kfp.local against the local stack (or the S3/MLflow the environment names)."""
    import time
    import uuid

    from amnesia.summary import summarize
    from pipelines.local import run_local

    cfg = _pipeline_config(config_path)
    settings = client_settings()
    rid = run_id or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = Path(settings.home) / "kfp-local"
    logs = workdir / rid / "logs"
    click.echo(f"run     {rid}: preflight → split → trace → unlearn → evaluate → gate → register (kfp.local)")
    try:
        run_local(cfg, settings, rid, workdir, logs=logs, verbose=verbose)
    finally:
        for line in summarize(cfg, settings, rid, reports=Path(settings.home) / "reports"):
            click.echo(line)
        click.echo(f"logs    {logs} (one file per task)")


@cli.command("compile")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="Pipeline config YAML: its `cluster:` section (secrets, GPUs, node selectors, tolerations).",
)
@click.option("--image", help="REPO:TAG of the project image for every component (default: the package version).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Where to write the pipeline YAML.")  # fmt: skip
def compile_cmd(config_path: Path | None, image: str | None, out: Path) -> None:
    """Write the pipeline YAML for a cluster (KFP v2)."""
    from amnesia.config import ClusterConfig, load_yaml, parse_model
    from pipelines.compile import compile_pipeline

    data = load_yaml(config_path).get("cluster", {}) if config_path else {}
    cluster = parse_model(ClusterConfig, data, f"{config_path}: cluster")
    if image:
        cluster = cluster.model_copy(update={"image": image})
    compile_pipeline(cluster, out)
    click.echo(f"wrote {out}")


def _server_options(command: Any) -> Any:
    """--host, --namespace, --experiment, --token: where and as whom to reach Kubeflow Pipelines."""
    options = [
        click.option("--host", required=True, help="The KFP API address, e.g. https://kubeflow.example/pipeline."),
        click.option("--namespace", help="Multi-user Kubeflow: the profile namespace to run in."),
        click.option("--experiment", help="KFP experiment (default: the config's experiment)."),
        click.option(
            "--token", envvar="KF_PIPELINES_TOKEN", help="Bearer token for the KFP API (env KF_PIPELINES_TOKEN)."
        ),
    ]
    for option in reversed(options):  # click lists options in decorator order
        command = option(command)
    return command


def _server(host: str, namespace: str | None, token: str | None) -> Any:
    from pipelines.remote import Server

    return Server(host=host, namespace=namespace, token=token)


@cli.command("submit")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.pipeline_config.PipelineConfig).")  # fmt: skip
@_server_options
@click.option("--run-id", help="Pipeline run id (default: <name>-<time>-<random>).")
def submit_cmd(
    config_path: Path, host: str, namespace: str | None, experiment: str | None, token: str | None, run_id: str | None
) -> None:
    """Compile and start one run on a Kubeflow Pipelines server, for the requests pending now."""
    import time
    import uuid

    from amnesia.storage import ArtifactStore
    from pipelines.local import queue_digest
    from pipelines.remote import submit

    cfg = _pipeline_config(config_path, experiment)
    settings = client_settings()
    root = cfg.store_root(settings.bucket)
    digest = queue_digest(ArtifactStore(settings), root) if cfg.split.requests == "queue" else ""
    rid = run_id or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    result = submit(cfg, _server(host, namespace, token), rid, root, digest)
    click.echo(f"submitted {rid}: KFP run {result.run_id}")


@cli.command("schedule")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Pipeline config YAML (amnesia.pipeline_config.PipelineConfig).")  # fmt: skip
@_server_options
@click.option("--cron", required=True, help="Six fields, seconds first: '0 0 3 * * *' = 03:00 daily.")
@click.option("--name", "job_name", default="amnesia-scheduled", show_default=True, help="The recurring run's name.")
def schedule_cmd(
    config_path: Path, host: str, namespace: str | None, experiment: str | None, token: str | None, cron: str,
    job_name: str,
) -> None:  # fmt: skip
    """A recurring run (one at a time, no catch-up) that works through the request queue on a schedule."""
    from pipelines.remote import check_cron, schedule

    check_cron(cron)
    cfg = _pipeline_config(config_path, experiment)
    settings = load_settings()
    job = schedule(cfg, _server(host, namespace, token), cron, cfg.store_root(settings.bucket), job_name)
    click.echo(f"scheduled {job_name} ({cron}): recurring run {job.recurring_run_id}")


@cli.command("approve")
@click.argument("name")
@click.argument("version")
@click.option("--note", required=True, help="What was checked (kept in the artifact store, not in MLflow).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def approve_cmd(name: str, version: str, note: str, root: str | None) -> None:
    """Promote a gate-passed candidate to `champion`; its requests move to fulfilled. The approver is the
    MLflow user this shell authenticates as (MLFLOW_TRACKING_USERNAME): MANAGE on the model, not the runner."""
    from amnesia.identity import from_settings
    from amnesia.registry import approve
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    store_root = root or f"s3://{settings.bucket}"
    tags = approve(settings, ArtifactStore(settings), store_root, name, version, from_settings(settings), note)
    previous = tags["amnesia.previous_champion"]
    click.echo(
        f"{name} v{version} is champion (previous: {previous}), approved by {tags['amnesia.approver']}; "
        f"note stored at {tags['amnesia.note_uri']}"
    )


@cli.command("reject")
@click.argument("name")
@click.argument("version")
@click.option("--note", required=True, help="Why it is rejected (kept in the artifact store, not in MLflow).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def reject_cmd(name: str, version: str, note: str, root: str | None) -> None:
    """Reject a candidate; its requests stay pending for the next run. The reviewer is the authenticated
    MLflow user, as for `approve`."""
    from amnesia.identity import from_settings
    from amnesia.registry import reject
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    who = from_settings(settings)
    reject(settings, ArtifactStore(settings), root or f"s3://{settings.bucket}", name, version, who, note)
    click.echo(f"{name} v{version} rejected by {who.user}")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=5600, show_default=True, help="Port to listen on.")
@click.option(
    "--auth",
    type=click.Choice(["mlflow", "proxy"]),
    default="mlflow",
    show_default=True,
    help="mlflow: reviewers sign in with their MLflow password; proxy: a trusted header names them.",
)
@click.option("--proxy-header", default="X-Forwarded-User", show_default=True, help="--auth proxy: the user header.")
@click.option(
    "--trusted-proxy",
    "proxies",
    multiple=True,
    default=("127.0.0.1/32", "::1/128"),
    show_default=True,
    help="--auth proxy: networks the proxy connects from (repeatable); others are refused.",
)
@click.option("--secure-cookies", is_flag=True, help="Send the session cookie over HTTPS only (behind TLS).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def serve_cmd(host: str, port: int, auth: str, proxy_header: str, proxies: tuple[str, ...], secure_cookies: bool,
              root: str | None) -> None:  # fmt: skip
    """The reviewers' page: pending candidates, their evidence, approve or reject as a signed-in person.
    Runs as an MLflow admin (MLFLOW_TRACKING_USERNAME); AMNESIA_REVIEW_SECRET_KEY keeps sessions across restarts."""
    import os

    from amnesia import stack as stk
    from amnesia.review import ReviewConfig, serve

    state = stk.running(load_settings().home)
    if state is not None and "MLFLOW_TRACKING_USERNAME" not in os.environ:  # the local stack: as its MLflow admin
        for key, value in state.env("service").items():
            os.environ.setdefault(key, value)
    settings = client_settings()
    cfg = ReviewConfig(auth=auth, proxy_header=proxy_header, trusted_proxies=proxies, secure_cookies=secure_cookies)
    if os.environ.get("AMNESIA_REVIEW_SECRET_KEY"):
        cfg.secret_key = os.environ["AMNESIA_REVIEW_SECRET_KEY"]
    click.echo(f"review page on http://{host}:{port} (auth: {auth})")
    serve(settings, root or f"s3://{settings.bucket}", host, port, cfg)


@cli.command("pending")
@click.argument("name", required=False)
def pending_cmd(name: str | None) -> None:
    """Versions waiting for a person's decision (every model's, or NAME's): gate, key figures, age."""
    from amnesia.progress import span
    from amnesia.registry import pending

    rows = pending(client_settings(), name)
    if not rows:
        click.echo("nothing waits for a decision")
    for r in rows:
        figures = "  ".join(f"{k} {v:.3f}" for k, v in r["figures"].items())
        click.echo(f"{r['name']} v{r['version']:<4} gate {r['gate']:<10} {figures}  waiting {span(r['age_s'])}")
        click.echo(f"    run {r['pipeline_run_id']} by {r['runner']}: `amnesia audit {r['name']} {r['version']}`")


@cli.command("history")
@click.argument("name")
def history_cmd(name: str) -> None:
    """Every approval and rejection of the model's versions, oldest first."""
    from amnesia.registry import history

    rows = history(client_settings(), name)
    if not rows:
        click.echo("no decisions yet")
    for r in rows:
        who = f"by {r['reviewer']:<16} ({r['authenticated_by']})"
        click.echo(f"{r['at']}  v{r['version']:<4} {r['status']:<9} {who} previous champion {r['previous_champion']}")


@cli.command("audit")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="The whole chain as JSON.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write an HTML page here.")
def audit_cmd(name: str, version: str, as_json: bool, html_out: Path | None) -> None:
    """Rebuild a model version's chain and re-hash every artifact it names; exit 1 if anything fails."""
    from amnesia.audit import audit, to_html
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    result = audit(settings, ArtifactStore(settings), name, version)
    if html_out:
        html_out.write_text(to_html(result))
    if as_json:
        click.echo(result.model_dump_json(indent=1))
    else:
        click.echo(f"audit {name} v{version} ({result.status}): {'OK' if result.ok else 'FAILED'}")
        for link in result.links:
            click.echo(f"  {'ok  ' if link.ok else 'FAIL'} {link.step:<18} {link.what}  {link.uri or ''}")
    if not result.ok:
        sys.exit(1)


@cli.command("attack")
@click.argument("name")
@click.argument("version")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="Run config YAML: its model section, evaluate.attacks and gate ceilings (default: the defaults).",
)
@click.option("--rtt-steps", type=int, help="Relearning steps per fold (an audit: 100-200; the default is CI-sized).")
@click.option("--bits", help="Quantization bit widths, comma-separated (e.g. 4,3).")
@click.option("--nf4", is_flag=True, help="Also NF4 (bitsandbytes' 4-bit format), emulated in torch.")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def attack_cmd(
    name: str, version: str, config_path: Path | None, rtt_steps: int | None, bits: str | None, nf4: bool,
    root: str | None,
) -> None:  # fmt: skip
    """Attack a registered version (quantization, relearning) against its base model, now; the results join
    its lineage and its audit. Exit status 3 when a worst recovery crosses its ceiling."""
    import logging

    from amnesia.config import AttackConfig, EvaluateConfig, GateConfig, ModelConfig, load_yaml, parse_model
    from amnesia.reattack import attack_version
    from amnesia.storage import ArtifactStore

    raw = load_yaml(config_path) if config_path else {}
    where = f"{config_path}: " if config_path else ""
    evaluate = parse_model(EvaluateConfig, raw.get("evaluate", {}), f"{where}evaluate")
    gate = parse_model(GateConfig, raw.get("gate", {}), f"{where}gate")
    model = parse_model(ModelConfig, raw.get("model", {}), f"{where}model")
    attacks = (evaluate.attacks or AttackConfig()).model_dump()
    if rtt_steps is not None:
        attacks["relearning"] = (attacks["relearning"] or {}) | {"steps": rtt_steps}
    if bits is not None:
        attacks["quantization"] = (attacks["quantization"] or {}) | {"bits": [int(b) for b in bits.split(",")]}
    if nf4:
        attacks["quantization"] = (attacks["quantization"] or {}) | {"nf4": True}
    cfg = parse_model(AttackConfig, attacks, "attacks")
    settings = client_settings()
    store_root = root or f"s3://{settings.bucket}"
    log = logging.getLogger("amnesia")
    result = attack_version(
        settings, ArtifactStore(settings), store_root, name, version, cfg, model, evaluate, gate, log
    )
    click.echo(f"attack {name} v{version}: stored at {result.uri} ({result.digest[:16]})")
    for key, value in sorted(result.recoveries.items()):
        click.echo(f"  {key:<44} {value:.3f}")
    for check in result.checks:
        click.echo(f"  {'ok  ' if check.passed else 'FAIL'} {check.reason()}")
    if not all(c.passed for c in result.checks):
        sys.exit(3)


@cli.group(cls=_Group)
def requests() -> None:
    """The erasure-request queue (pending -> fulfilled on approval)."""


@requests.command("submit")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_submit(path: Path, root: str | None) -> None:
    """Queue the requests in a JSONL or YAML file."""
    from amnesia.requests import RequestQueue, load_requests
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    ids = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}").submit(load_requests(path))
    click.echo(f"queued {len(ids)} requests")


@requests.command("list")
@click.option("--state", type=click.Choice(["pending", "fulfilled"]), default="pending", show_default=True,
              help="Requests waiting for a run, or those an approved model fulfilled.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request.")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_list(state: str, as_json: bool, root: str | None) -> None:
    """Request ids by due date (GDPR Art. 12(3)), soonest first: overdue ones lead. No subjects."""
    from datetime import UTC, datetime

    from amnesia.requests import RequestQueue
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    queue = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}")
    now = datetime.now(UTC)
    for d in queue.by_due_date(state):  # type: ignore[arg-type]
        row = d.row(now)
        if as_json:
            click.echo(json.dumps(row))
            continue
        left = "OVERDUE by {} days".format(-row["days_left"]) if row["overdue"] else f"{row['days_left']} days left"
        extended = f", extended {row['extended_months']} months" if row["extended_months"] else ""
        when = left if state == "pending" else "fulfilled"
        click.echo(f"{d.request.request_id}  received {d.request.received_at:%Y-%m-%d}  due {d.due:%Y-%m-%d}  "
                   f"{when}{extended}  ground 17(1)({d.request.ground})")  # fmt: skip


@requests.command("extend")
@click.option("--request", "request_id", required=True, help="The pending request's id.")
@click.option("--reason", required=True, help="The reason given to the person (kept in the store, not in MLflow).")
@click.option("--months", type=click.IntRange(1, 2), default=2, show_default=True, help="By how many months.")
@click.option("--by", "by", help="Who decides (default: AMNESIA_RUNNER or the OS user).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def requests_extend(request_id: str, reason: str, months: int, by: str | None, root: str | None) -> None:
    """Extend a request's deadline (Art. 12(3): at most two further months, with a reason to the person)."""
    from amnesia.lineage import runner_identity
    from amnesia.requests import RequestQueue
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    queue = RequestQueue(ArtifactStore(settings), root or f"s3://{settings.bucket}")
    due = queue.extend(request_id, reason, by or runner_identity(), months)
    click.echo(f"{request_id}: now due {due.due:%Y-%m-%d} (extended {due.extension.months if due.extension else 0} "
               "months in all)")  # fmt: skip


@cli.command("purge")
@click.option("--run", "runs", multiple=True, help="A pipeline run id (repeatable).")
@click.option("--request", "requests_", multiple=True, help="An erasure request id: every run that worked on it.")
@click.option("--dry-run", is_flag=True, help="List what would be destroyed; change nothing.")
@click.option("--by", "by", help="Who purges (default: AMNESIA_RUNNER or the OS user).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def purge_cmd(
    runs: tuple[str, ...], requests_: tuple[str, ...], dry_run: bool, by: str | None, root: str | None
) -> None:
    """Destroy a decided run's data key and delete its personal files; the evidence (ids, digests, metrics)
    stays, and `amnesia audit` shows the purge."""
    from amnesia.purge import plan, purge
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    store, store_root = ArtifactStore(settings), root or f"s3://{settings.bucket}"
    if dry_run:
        record = plan(settings, store, store_root, list(runs), list(requests_))
        click.echo(f"would purge runs {', '.join(record.runs)} (versions: {', '.join(record.versions) or 'none'}):")
        click.echo(f"  destroy data keys {', '.join(record.key_ids)}")
        for f in record.files:
            click.echo(f"  delete {f.uri} ({f.size} bytes)")
        return
    record, uri = purge(settings, store, store_root, list(runs), list(requests_), by=by)
    click.echo(f"purged runs {', '.join(record.runs)}: {len(record.key_ids)} data keys destroyed, "
               f"{len(record.files)} personal files deleted; record {uri}")  # fmt: skip


@cli.command("evidence")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="The evidence as JSON.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write one self-contained page here.")
@click.option("--show-subject", is_flag=True, help="Name the data subject (personal data: off by default).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def evidence_cmd(request_id: str, as_json: bool, html_out: Path | None, show_subject: bool, root: str | None) -> None:
    """What was done about one erasure request: deadlines, runs, this person's figures, approval, purge."""
    from amnesia.evidence import evidence, lines, to_html
    from amnesia.storage import ArtifactStore

    settings = client_settings()
    found = evidence(settings, ArtifactStore(settings), root or f"s3://{settings.bucket}", request_id, show_subject)
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(to_html(found))
    if as_json:
        click.echo(found.model_dump_json(indent=1))
    else:
        for line in lines(found):
            click.echo(line)
        if html_out is not None:
            click.echo(f"page    {html_out}")


def main() -> None:
    import logging

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow imports GitPython
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("amnesia").addHandler(handler)
    logging.getLogger("amnesia").setLevel(logging.INFO)
    cli(prog_name="amnesia")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
