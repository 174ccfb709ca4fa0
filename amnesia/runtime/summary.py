"""What a finished pipeline run left behind, read back from MLflow and the store: the lines `amnesia run`
and `make demo` end with (verdict, before/after, model version, MLflow address, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amnesia.core.settings import Settings
from amnesia.science.metrics.registry import headline
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.layout import REPORT_HTML, SPLIT_REPORT, TRACE_AGGREGATE, VERDICT, run_root
from amnesia.storage.lineage import PIPELINE_STAGES, Lineage, Tag, recorded_errors
from amnesia.storage.requests import DUE_SOON_DAYS
from amnesia.storage.uri import join


def run_record(settings: Settings, experiment: str, run_id: str) -> dict[str, Any]:
    """The parent run's tags and every stage run's tags and metrics, by stage name."""
    lineage = Lineage(run_id, experiment=experiment, settings=settings)
    parent = lineage.client.get_run(lineage.parent_run_id())
    stages = {
        r.data.tags.get(Tag.STAGE): r
        for r in lineage.client.search_runs(
            [lineage.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
    }
    return {"lineage": lineage, "parent": parent, "stages": stages}


def registered_version(
    settings: Settings, name: str, run_id: str, request_digest: str | None, base_digest: str | None,
    start_digest: str | None = None,
) -> Any:
    """The version this run registered, or the one an earlier run made from the same inputs."""
    from amnesia.governance.versions import find_version, registry_client

    try:
        client = registry_client(settings)
        made = client.search_model_versions(f"name='{name}' and tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}'")
        if made:
            return made[0]
        if not request_digest or not base_digest:
            return None
        return find_version(client, name, request_digest, base_digest, start_digest)
    except Exception:  # no such registered model yet
        return None


def _deadline_lines(store: ArtifactStore, split_uri: str) -> list[str]:
    """Art. 12(3): the run's requests past their due date, or due within a week (ids only)."""
    deadlines = store.get_json(join(split_uri, SPLIT_REPORT)).get("deadlines", {})
    out = []
    for key, words in (("overdue", "OVERDUE"), ("due_soon", f"due within {DUE_SOON_DAYS} days")):
        ids = deadlines.get(key, [])
        if ids:
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            out.append(f"WARNING requests {words}: {shown} (`amnesia requests list`)")
    return out


def _interrupted(stages: dict[str, Any], root: str, run_id: str) -> list[str]:
    """Where an unfinished run stopped (the first stage still RUNNING, else the first that never started),
    what it finished, and where that lies."""
    status = {name: run.info.status for name, run in stages.items() if name}
    at = next((n for n in PIPELINE_STAGES if status.get(n) == "RUNNING"), None)
    at = at or next((n for n in PIPELINE_STAGES if n not in status), "register")
    done = [n for n in PIPELINE_STAGES if status.get(n) == "FINISHED"]
    return [
        f"status  interrupted at {at}: the run did not finish",
        f"        finished: {', '.join(done) or 'nothing'}; what they stored is under {root}",
        f"        again: amnesia run --config … --run-id {run_id} (unlearn resumes from its checkpoints there, "
        "a stored evaluation is reused)",
    ]


def summarize(cfg: Any, settings: Settings, run_id: str, reports: Path | None = None) -> list[str]:
    """The closing lines; with `reports`, the gate's report is also copied there and named by local path."""
    rec = run_record(settings, cfg.experiment, run_id)
    parent, stages, lineage = rec["parent"], rec["stages"], rec["lineage"]
    tags = parent.data.tags
    root = run_root(cfg.store_root(settings.bucket), run_id)
    if Tag.STATUS in tags:
        lines = [f"status  {tags[Tag.STATUS]} (stopped at: {tags.get(Tag.STOPPED_AT, '?')})"]
    else:  # the exit handler never ran: Ctrl-C, a killed process
        lines = _interrupted(stages, root, run_id)
    for line in recorded_errors(ArtifactStore(settings), root).values():
        lines.append(f"error   {line}")  # the stage's own one line: what to fix
    trace = stages.get("trace")
    if trace is not None and trace.data.tags.get(Tag.TRACE_WARNING):  # the layers are a fallback, not a finding
        agg = ArtifactStore(settings).get_json(join(trace.data.tags[Tag.TRACE_URI], TRACE_AGGREGATE))
        lines.append(f"WARNING trace: {agg.get('warning') or trace.data.tags[Tag.TRACE_WARNING]}")
    search = stages.get("search")
    if search is not None and "chosen" in search.data.metrics:
        lines.append(f"search  {_search_line(search)}")
    gate = stages.get("gate")
    if gate is not None:
        passed = gate.data.tags.get(Tag.GATE_PASSED) == "true"
        reasons = gate.data.tags.get(Tag.GATE_REASONS, "none")
        lines.append(f"gate    {'PASS' if passed else 'FAIL'}" + ("" if passed else f": {reasons}"))
        report_uri = gate.data.tags[Tag.REPORT_URI]
        store = ArtifactStore(settings)
        verdict = store.get_json(join(report_uri, VERDICT))
        lines += [f"        {reason}" for reason in verdict.get("reasons", [])]  # why, in words
        m = gate.data.metrics
        for name in headline():  # the headline figures, before -> after
            if name in m and f"base.{name}" in m:
                lines.append(f"        {name:<22} {m[f'base.{name}']:.3f} -> {m[name]:.3f}")
        lines.append(f"report  {join(report_uri, REPORT_HTML)}")
        if reports is not None:  # a path a browser opens
            local = store.get_file(join(report_uri, REPORT_HTML), reports / run_id / REPORT_HTML)
            lines.append(f"        {local}")
    split, unlearn = stages.get("split"), stages.get("unlearn")
    if split is not None and split.data.tags.get(Tag.SPLIT_URI):
        lines += _deadline_lines(ArtifactStore(settings), split.data.tags[Tag.SPLIT_URI])
    request_digest = split.data.tags.get(Tag.REQUEST_DIGEST) or split.data.tags.get(Tag.SPLIT_DIGEST) if split else None
    # The version's base is the original model; unlearn's base tag is the model it started from (a champion's
    # folder when the run was incremental).
    start_digest = unlearn.data.tags.get(Tag.BASE_MODEL_DIGEST) if unlearn else None
    original = parent.data.tags.get(Tag.ORIGINAL_MODEL_DIGEST)
    base_digest = original if original and original != "none" else start_digest
    mv = registered_version(settings, cfg.model_name, run_id, request_digest, base_digest, start_digest)
    if mv is not None:
        first = mv.tags.get(Tag.PIPELINE_RUN_ID) == run_id
        again = "" if first else f"; already registered by run {mv.tags.get(Tag.PIPELINE_RUN_ID)}"
        lines.append(f"model   {cfg.model_name} version {mv.version} ({mv.tags.get(Tag.STATUS)}){again}")
        lines.append(f"        approve: amnesia approve {cfg.model_name} {mv.version} --note '…' (as a reviewer with "
                     "MANAGE on the model, not the runner: `amnesia stack env --user NAME`)")  # fmt: skip
    lines.append(
        f"mlflow  {settings.mlflow_tracking_uri}/#/experiments/{lineage.experiment_id}/runs/{parent.info.run_id}"
    )
    return lines


def _search_line(run: Any) -> str:
    """The settings search in one line, from its MLflow stage run: trials, the chosen one, its margin."""
    m, p = run.data.metrics, run.data.params
    chosen = ", ".join(f"{k.removeprefix('chosen.').removeprefix('method_args.')}={_short(v)}"
                       for k, v in sorted(p.items()) if k.startswith("chosen."))  # fmt: skip
    return (f"{int(m.get('count_trials', 0))} trials ({int(m.get('count_pruned', 0))} pruned, "
            f"{int(m.get('count_passed', 0))} passed) in {m.get('seconds', 0):.0f} s; chose trial "
            f"{int(m['chosen'])} ({chosen}), margin {m.get('margin', 0):+.3f}")


def _short(value: str) -> str:
    """An MLflow param (a string) as the search table shows it: floats to 3 significant digits."""
    try:
        return value if value.isdigit() else f"{float(value):.3g}"
    except ValueError:
        return value
