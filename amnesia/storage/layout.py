"""Where everything lives in the store: one description that stages, CLI, lineage, audit and purge read.

    <root>/runs/<run>/<stage folder>/...        what each stage of one pipeline run wrote
    <root>/cache/evaluations/<key>/...          evaluations reused across runs (same model, data, config)
    <root>/attacks/<name>/v<version>/<stamp>/   `amnesia attack` on a registered version
    <root>/requests/{pending,fulfilled,extensions}/<request>.json
    <root>/registry/<name>/v<version>/<decision>.json
    <root>/purges/<purge id>.json
    <root>/obligations/<model>/<request>/   standing obligations (amnesia.storage.obligations)

`STAGES` is the one stage table: each pipeline stage's name, stored folder and files, the run-config section
that configures it, its component and KFP tasks, and whether it is a compute stage (retried, given GPUs).
Lineage's stage list, the DAG's retried and GPU tasks and the pipeline's config arguments are derived from
it. Every file a stage writes is named here once, with whether it carries personal data (the text or name
of someone to be forgotten). Those files are encrypted at rest with the run's data key and deleted by
`amnesia purge`; the rest (ids, digests, metrics, plots of aggregates) is the evidence that stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amnesia.storage.uri import MANIFEST_NAME, join

RUNS, CACHE, ATTACKS, REQUESTS, REGISTRY, PURGES = "runs", "cache", "attacks", "requests", "registry", "purges"
EVALUATION_CACHE = f"{CACHE}/evaluations"


@dataclass(frozen=True)
class File:
    pattern: str  # below the stage's folder; '*' crosses no '/', '**' does
    about: str
    personal: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str  # below the run's folder ('*' for one level chosen at run time)
    files: tuple[File, ...]
    section: str | None = None  # the run config's section (PipelineConfig.<section>, pipeline arg <section>_config)
    component: str | None = None  # its KFP component (components/<component>.py); None: a folder, not a stage
    tasks: tuple[str, ...] = ()  # its tasks in the DAG, each with its own MLflow stage run (default: the name)
    compute: bool = False  # loads a model: retried on failure, and given the GPU and resources on a cluster
    tracked: bool = True  # has MLflow stage runs (preflight only opens the parent run)

    def file(self, pattern: str) -> File:
        return next(f for f in self.files if f.pattern == pattern)


# The split's sets (Parquet, one per set); the forget sets and the MIA members are the people to forget.
SPLIT_SETS = ("forget_train", "forget_eval", "retain_train", "retain_eval")
MIA_SETS = ("mia_members", "mia_nonmembers")
_PERSONAL_SETS = {"forget_train", "forget_eval", "mia_members"}

REQUESTS_SNAPSHOT = "requests.jsonl"
SPLIT_REPORT = "split_report.json"
TRACE_AGGREGATE = "aggregate.json"
TRACE_FACTS = "facts.jsonl"
HEATMAPS = "heatmaps"
UNLEARN_SUMMARY = "amnesia_unlearn.json"  # inside the model folder: travels with the weights
UNLEARN_REPORT_SUMMARY = "summary.json"
CURVES_JSON, CURVES_PNG = "curves.json", "curves.png"
RESULT = "result.json"  # an evaluation's or an attack run's figures
ITEMS, GENERATIONS, MIA_LOSSES, ATTACK_ITEMS = "items.jsonl", "generations.jsonl", "mia.jsonl", "attacks.jsonl"
OBLIGATION_ITEMS = "obligations.jsonl"
PLAN = "plan.json"
SEARCH = "search"  # below the unlearn stage's folder: the settings search's table and plot
SEARCH_JSON, SEARCH_MD, SEARCH_PNG = "search.json", "search.md", "search.png"
SEARCH_TRIALS = "trials"
VERDICT, REPORT_HTML, REPORT_MD = "verdict.json", "report.html", "report.md"

_EVALUATION_FILES = (
    File(RESULT, "the figures (Evaluation)"),
    File(ITEMS, "per item: id, set, task, kind, score"),
    File(GENERATIONS, "what the model generated for each item", personal=True),
    File(MIA_LOSSES, "per MIA document: id, member, loss"),
    File(ATTACK_ITEMS, "per item under each attack: id and score"),
    File(OBLIGATION_ITEMS, "per item of each earlier request checked: request id, id, kind, score"),
)

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("preflight", "preflight", (File("probe.txt", "a write probe"),
                                         File(PLAN, "where the run starts, the obligations it checks (ids)")),
              component="preflight", tracked=False),
        Stage(
            "split",
            "split",
            section="split",
            component="split",
            files=tuple(
                File(f"{n}.parquet", f"the {n} set", personal=n in _PERSONAL_SETS) for n in SPLIT_SETS + MIA_SETS
            )
            + (
                File(REQUESTS_SNAPSHOT, "the erasure requests this run works on, with subjects", personal=True),
                File(SPLIT_REPORT, "counts, request ids, each request's documents, warnings"),
            ),
        ),
        Stage(
            "trace",
            "trace",
            section="trace",
            component="trace",
            compute=True,
            files=(
                File(TRACE_AGGREGATE, "mean indirect effects and the layer choice"),
                File(TRACE_FACTS, "per traced fact: id, subject span, scores"),
                File(f"{HEATMAPS}/aggregate_*.png", "mean-effect heatmaps (no text)"),
                File(f"{HEATMAPS}/fact*_*.png", "single-fact heatmaps: the prompt's tokens", personal=True),
            ),
        ),
        # The settings search (unlearn.search). Locally it runs inside the unlearn task; a cluster's compiled DAG
        # with cluster.search_parallel fans its trials out as these tasks (pipelines.unlearning).
        Stage(
            "search",
            f"unlearn/{SEARCH}",
            component="search",
            tasks=("search-plan", "search-trial", "search-choose"),
            compute=True,
            tracked=False,  # one stage run, "search", opened by whichever task records the result
            files=(
                File(SEARCH_JSON, "each trial's settings, curve, gate margins and figures; the chosen one"),
                File(SEARCH_MD, "the trial table"),
                File(SEARCH_PNG, "the trials' margins (no text)"),
                File(f"{SEARCH_TRIALS}/*.json", "a fanned-out trial: its record, evaluation and forget scores"),
                File(f"{SEARCH_TRIALS}/*.safetensors", "a fanned-out trial's trained tensors, for the attacks"),
            ),
        ),
        Stage(
            "unlearn",
            "unlearn",
            section="unlearn",
            component="unlearn",
            compute=True,
            files=(
                File("model/**", "the candidate model (weights, tokenizer, MLflow model)"),
                File("report/*", "run summary and training curves"),
                File("checkpoints/**", "resumable training state"),
                File("launch/**", "a training job's spec and result"),
            ),
        ),
        Stage(
            "evaluate",
            "evaluate/*",
            _EVALUATION_FILES,
            section="evaluate",
            component="evaluate",
            tasks=("evaluate-base", "evaluate-candidate"),
            compute=True,
        ),
        Stage(
            "gate",
            "report",
            section="gate",
            component="gate",
            files=(
                File(VERDICT, "passed, failed checks, reasons"),
                File(REPORT_HTML, "the report a reviewer reads"),
                File(REPORT_MD, "the report as Markdown"),
                File("*.png", "its figures"),
            ),
        ),
        Stage("errors", "errors", (File("*.txt", "a failed stage's one-line error"),)),
    )
}
CACHED_EVALUATION = Stage("cached evaluation", f"{EVALUATION_CACHE}/*", _EVALUATION_FILES)


def pipeline_stages() -> list[Stage]:
    """The stages of the DAG, in order (the table's rows with a component)."""
    return [s for s in STAGES.values() if s.component]


def task_names(stage: Stage) -> tuple[str, ...]:
    return stage.tasks or (stage.name,)


TRACKED_TASKS = tuple(t for s in pipeline_stages() if s.tracked for t in task_names(s))  # each has a stage run
COMPUTE_TASKS = tuple(t for s in pipeline_stages() if s.compute for t in task_names(s))  # retried, GPU
CONFIG_SECTIONS = tuple(s.section for s in pipeline_stages() if s.section)  # each a pipeline arg <section>_config


# ---------------------------------------------------------------- URIs


def run_root(root: str, run_id: str) -> str:
    return join(root, RUNS, run_id)


def store_root(run_folder: str) -> str:
    """The store root a run folder sits under (s3://bucket/runs/<run> -> s3://bucket)."""
    return run_folder.rsplit(f"/{RUNS}/", 1)[0]


def stage_uri(run_folder: str, stage: str, *parts: str) -> str:
    folder = STAGES[stage].folder
    if "*" in folder:
        folder = folder.replace("*", parts[0])
        parts = parts[1:]
    return join(run_folder, folder, *parts)


def evaluation_cache_uri(root: str, key: str) -> str:
    return join(root, EVALUATION_CACHE, key)


# ---------------------------------------------------------------- personal data


def _glob(pattern: str) -> re.Pattern[str]:
    out = re.escape(pattern).replace(r"\*\*", ".+").replace(r"\*", "[^/]+")
    return re.compile(out)


def _rules() -> list[tuple[re.Pattern[str], File]]:
    rules = []
    for stage in (*STAGES.values(), CACHED_EVALUATION):
        top = stage.folder if stage is CACHED_EVALUATION else f"{RUNS}/*/{stage.folder}"
        rules += [(re.compile(rf"(^|/){_glob(f'{top}/{f.pattern}').pattern}$"), f) for f in stage.files]
    return rules


_RULES = _rules()


def describe(uri: str) -> File | None:
    """What the layout says about a stored object (None: not a file a stage writes, e.g. a manifest)."""
    if uri.endswith("/" + MANIFEST_NAME):
        return None
    key = uri.split("://", 1)[-1]
    return next((f for rx, f in _RULES if rx.search(key)), None)


def personal(uri: str) -> bool:
    """Whether a stored object carries personal data of the people to forget (encrypted, purged)."""
    found = describe(uri)
    return found is not None and found.personal


def personal_patterns() -> list[str]:
    """For the README and `amnesia purge --dry-run`: every personal file, as a path pattern."""
    out = [f"{RUNS}/*/{s.folder}/{f.pattern}" for s in STAGES.values() for f in s.files if f.personal]
    return out + [f"{CACHED_EVALUATION.folder}/{f.pattern}" for f in CACHED_EVALUATION.files if f.personal]


def error_uri(root: str, stage: str) -> str:
    return join(root, "errors", f"{stage}.txt")


