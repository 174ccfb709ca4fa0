"""The run config: one YAML file, validated by one pydantic model per stage.

The CLI, the KFP components and the tests all build the same models, so a bad value fails the
same way everywhere: at load, with the file and the field named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amnesia.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    """The model and where it runs: one section that trace, unlearn and evaluate all honour.

    In a run config it can be a plain string (the URI) or a mapping. Resolved once per stage by
    amnesia.models.placement and recorded in lineage."""

    uri: str = Field("", description="Local folder, s3:// model folder, or hub id (online only).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); hub ids only.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="Weights' dtype. auto: bf16 for trace/evaluate on a GPU that has it, fp32 on the CPU; "
        "unlearn keeps fp32 master weights under auto (unlearn.precision adds bf16 autocast).",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto: cuda when present.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] | None = Field(
        None, description="Attention kernel (transformers' attn_implementation); None: the library's default."
    )
    trust_remote_code: bool = Field(False, description="Run the model repository's own Python code. Off by default.")
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        None,
        description="Spread a model too big for one GPU over all visible GPUs (trace and evaluate; unlearning "
        "uses model.device, or torchrun for several processes).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_uri(cls, data: Any) -> Any:
        return {"uri": data} if isinstance(data, str) else data

    @classmethod
    def from_task(cls, section_json: str, uri: str) -> ModelConfig:
        """The section as a pipeline task receives it: the JSON of everything but the URI, and the URI."""
        return cls.model_validate_json(section_json or "{}").model_copy(update={"uri": uri})


class StoreConfig(StrictModel):
    """Where a run writes: runs under <root>/runs/<id>, the request queue under <root>/requests, cached
    evaluations under <root>/cache. s3://bucket[/prefix] or a local folder; default s3://<AMNESIA_BUCKET>."""

    root: str | None = Field(None, description="s3://bucket[/prefix] or a local folder.")
    retention_days: int | None = Field(
        None,
        ge=0,
        description="Purge the personal data of runs whose model versions were decided this many days ago, at "
        "the end of every pipeline run (`amnesia purge`); None keeps it until purged by hand.",
    )


class SplitConfig(StrictModel):
    """Stage 1. Either `corpus` + `requests` (erasure requests resolved against the training corpus)
    or `forget` + `retain` (the SemEval setup: ready files, no requests)."""

    corpus: str | None = Field(None, description="All trained records (path, s3:// URI or hub id).")
    requests: str | None = Field(None, description="A requests file (JSONL/YAML), or 'queue' for the pending queue.")
    forget: str | None = None
    retain: str | None = None
    mia_members: str | None = Field(None, description="MIA documents; those of forget documents are kept.")
    mia_nonmembers: str | None = Field(
        None, description="Never-trained MIA documents; default: corpus records whose split is 'holdout'."
    )
    forget_eval_fraction: float = Field(0.0, ge=0, lt=1, description="0: every forget document is trained on.")
    retain_eval_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    subject_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A document is a subject's own when the subject appears in at least this share of its records.",
    )
    retain_mentions: Literal["refuse", "move"] = "refuse"
    unmatched_requests: Literal["refuse", "warn"] = "refuse"

    @model_validator(mode="after")
    def _one_mode(self) -> SplitConfig:
        request_mode = self.corpus is not None or self.requests is not None
        semeval_mode = self.forget is not None or self.retain is not None
        if request_mode == semeval_mode:
            raise ValueError("give either corpus + requests, or forget + retain")
        if request_mode and (self.corpus is None or self.requests is None):
            raise ValueError("request mode needs both corpus and requests")
        if semeval_mode and (self.forget is None or self.retain is None):
            raise ValueError("the SemEval setup needs both forget and retain")
        return self


class TraceConfig(StrictModel):
    """Stage 2: causal tracing of the forget facts, and the choice of layers to unlearn."""

    kinds: list[Literal["hidden", "mlp", "attn"]] = ["hidden", "mlp", "attn"]
    noise_multiplier: float = Field(3.0, gt=0, description="Noise std = this × the subject embeddings' std.")
    samples: int = Field(10, ge=1, le=1000, description="Corrupted copies per fact.")
    window: int = Field(10, ge=1, description="Layers restored together for mlp/attn, centred on the layer.")
    seed: int = Field(0, ge=0)
    max_facts: int | None = Field(
        None,
        ge=1,
        description="Trace at most this many facts: a stratified sample (per request, per answer kind) drawn "
        "with `seed`, so a large forget set does not mean as many traces.",
    )
    min_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Skip facts whose answer barely depends on the "
        "subject: corrupting it lowers p(target) by less than this.",
    )
    method: Literal["exact", "atp", "hybrid"] = Field(
        "exact",
        description="exact: every cell by patching (ROME). atp: attribution patching, every cell estimated from "
        "one forward and one backward (approximate). hybrid: atp screens, exact patching confirms each fact's "
        "top cells and the chosen token group's row, so the layer choice rests on exact effects.",
    )
    confirm: int = Field(8, ge=0, description="hybrid: the top cells per fact confirmed by exact patching.")
    graddrop: bool = Field(
        False, description="atp/hybrid: AtP*'s GradDrop screen (L more row groups; finds cells whose paths cancel)."
    )
    k: int = Field(3, ge=1, description="Window size of the automatic layer choice.")
    group: Literal["auto", "first subject token", "middle subject tokens", "last subject token", "last token"] = Field(
        "auto",
        description="The token group the rule reads; auto: the one whose best window stands furthest above noise.",
    )
    min_confidence: float = Field(
        2.0,
        description="The chosen window's mean MLP effect over its bootstrap spread across facts must reach this; "
        "below it the choice is noise: refuse, or use fallback_layers with a warning.",
    )
    fallback_layers: list[int] | None = Field(
        None, description="Layers to use (with a loud warning) when no window is above noise; none: refuse."
    )
    resamples: int = Field(200, ge=20, le=10000, description="Bootstrap resamples of the facts for the confidence.")
    layers: list[int] | None = Field(None, description="Explicit layers to unlearn; wins over the rule.")
    heatmap_facts: int = Field(3, ge=0, le=50, description="Single-fact heatmaps to draw (stored in S3 only).")
    max_rows: int = Field(2048, ge=16, description="Rows per batched forward pass.")
    prefix_cache: bool | Literal["auto"] = Field(
        "auto",
        description="Share the corrupted prefix's KV cache across restorations (exact); off: every "
        "restoration runs the whole prompt. auto: on a CPU (compute-bound: 1.7x faster on the demo model), "
        "off on a GPU (launch-bound: 4-5x slower there on an H100).",
    )


class MMLUConfig(StrictModel):
    """The utility benchmark: MMLU (cais/mmlu layout) or any set in its columns."""

    uri: str = Field("cais/mmlu", description="Hub id (online), local folder or s3:// folder.")
    split: str = "test"
    dev_split: str = Field("dev", description="Where the k shots come from (the first k of the subject).")
    shots: int = Field(5, ge=0, le=10)
    format: Literal["letter", "cloze"] = Field(
        "letter",
        description="letter: argmax over ' A'..' D' after 'Answer:' (the standard harness); cloze: the "
        "log-likelihood of each choice's own text per character (what small models can show signal on).",
    )
    subjects: list[str] | None = None
    per_subject: int | None = Field(None, ge=1, description="Sample this many questions per subject (seeded).")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1)


class QuantizationAttackConfig(StrictModel):
    """Re-score the forget set after round-to-nearest weight quantization of the linear layers."""

    bits: list[int] = Field([8, 4], min_length=1, description="One variant per bit width (2..8).")
    group_size: int = Field(128, ge=0, description="Input columns per quantization group (0: a whole row).")
    schemes: list[Literal["sym", "asym"]] = Field(["sym", "asym"], min_length=1)
    nf4: bool = Field(
        False,
        description="Also NF4 (bitsandbytes' 4-bit format, QLoRA's: blocks of 64, absmax, 16 normal-quantile "
        "levels), emulated in torch on any device: what most people run a 4-bit model with.",
    )

    @model_validator(mode="after")
    def _bits_in_range(self) -> QuantizationAttackConfig:
        if any(not 2 <= b <= 8 for b in self.bits):
            raise ValueError(f"bits must lie in 2..8: {self.bits}")
        return self

    def schemes_symmetric(self) -> list[bool]:
        return [s == "sym" for s in self.schemes]


class RelearningAttackConfig(StrictModel):
    """Fine-tune on k − 1 folds of the forget documents, score the held-out fold, rotate (RTT). The
    defaults are cheap (CI); an audit raises steps (e.g. 100-200) and uses the model's own lr."""

    folds: int = Field(5, ge=2, le=50)
    steps: int = Field(20, ge=1, description="AdamW steps per fold.")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    layers: list[int] | None = Field(
        None, description="Fine-tune only these layers (e.g. the unlearned ones); none: all."
    )
    prompt_format: Literal["raw", "chat"] = "raw"
    seed: int = Field(0, ge=0)


class AttackConfig(StrictModel):
    """Attacks on forgetting, run on every evaluated model's forget set; null turns one off."""

    quantization: QuantizationAttackConfig | None = QuantizationAttackConfig()
    relearning: RelearningAttackConfig | None = RelearningAttackConfig()


class EvaluateConfig(StrictModel):
    """Stage 4: the official scorer's metrics on a model; the base model's results are cached."""

    max_new_tokens: int = Field(256, ge=1, le=4096)
    batch_size: int = Field(32, ge=1)
    mia: bool = Field(True, description="Membership inference on the split's MIA sets.")
    mmlu: MMLUConfig | None = Field(MMLUConfig(), description="None: no utility benchmark (no final score).")
    cache: bool = Field(True, description="Reuse a stored result for the same model, data and config.")
    attacks: AttackConfig | None = Field(
        AttackConfig(), description="Quantization and relearning attacks on the forget set (null: none)."
    )


class GateConfig(StrictModel):
    """Stage 5: floors a candidate must clear; each in [0, 1], None turns a check off."""

    forget_floor: float | None = Field(
        0.6, ge=0, le=1, description="Overall forget score: harmonic mean of 1 - each forget metric."
    )
    forget_task_floor: float | None = Field(None, ge=0, le=1, description="The same, per task.")
    retain_floor: float | None = Field(0.6, ge=0, le=1, description="Harmonic mean of the retain metrics.")
    held_out_retain_floor: float | None = Field(
        None, ge=0, le=1, description="The same for retain documents the unlearning never trained on."
    )
    mmlu_floor: float | None = Field(None, ge=0, le=1, description="MMLU accuracy, absolute.")
    mmlu_relative_floor: float | None = Field(
        0.75, ge=0, le=1, description="MMLU accuracy as a share of the base model's (SemEval's 0.75)."
    )
    mia_floor: float | None = Field(None, ge=0, le=1, description="MIA score (1 = attack at chance).")
    held_out_retain_relative_floor: float | None = Field(
        0.9,
        ge=0,
        le=1,
        description="Held-out retain score (people in neither set: everyone else the model knows) as a share "
        "of the base model's: the collateral damage a candidate may do.",
    )
    quantization_recovery_ceiling: float | None = Field(
        0.10,
        ge=0,
        le=1,
        description="The largest share of the forgotten knowledge any quantization variant brings back "
        "(Zhang et al.: 4-bit brought back ~83% of it for most methods).",
    )
    relearning_recovery_ceiling: float | None = Field(
        0.25,
        ge=0,
        le=1,
        description="The largest share a relearning attack (fine-tuning on the other folds) brings back.",
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Further bounds on any figure by name (amnesia.measures: a registered metric's, a score, "
        "set.task.figure, attack.<variant>.<figure>, recovery.<variant>.<figure>): a floor where higher is "
        "better, a ceiling where lower is.",
    )

    def unmeasured(self, evaluate: EvaluateConfig) -> str | None:
        """A floor the evaluation config gives no number for, as 'field: why' (None: all measurable).
        Caught when the config loads, not after two evaluations have run."""
        if evaluate.mmlu is None:
            for name in ("mmlu_floor", "mmlu_relative_floor"):
                if getattr(self, name) is not None:
                    return f"{name}: evaluate.mmlu is null, so there is no MMLU to compare (set {name}: null)"
        if not evaluate.mia and self.mia_floor is not None:
            return "mia_floor: evaluate.mia is off, so there is no MIA score (set mia_floor: null)"
        attacks = evaluate.attacks
        for name, attack in (("quantization", "quantization"), ("relearning", "relearning")):
            if getattr(self, f"{name}_recovery_ceiling") is not None and (
                attacks is None or getattr(attacks, attack) is None
            ):
                return (
                    f"{name}_recovery_ceiling: evaluate.attacks.{attack} is off, so there is no recovery to "
                    f"compare (set {name}_recovery_ceiling: null)"
                )
        return None

    @model_validator(mode="after")
    def _floors_in_range(self) -> GateConfig:
        from amnesia.measures import direction

        bad = {k: v for k, v in self.floors.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"floors must lie in [0, 1]: {bad}")
        for name in self.floors:
            if direction(name) in (None, "target"):
                why = "is best at a target, not higher or lower" if direction(name) else "is not a figure we report"
                raise ValueError(f"floors: {name!r} {why} (see amnesia.measures)")
        return self


class Toleration(StrictModel):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class TrainJobConfig(StrictModel):
    """Run the unlearn step as a Kubeflow Trainer TrainJob (torch runtime): nodes × GPUs processes."""

    nodes: int = Field(1, ge=1, le=64, description="Training nodes (pods).")
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs, and so processes, per node.")
    runtime: str = Field("torch-distributed", description="The ClusterTrainingRuntime to run on.")
    timeout_s: int = Field(6 * 3600, ge=60, description="How long the launcher waits for the TrainJob.")
    poll_s: float = Field(20.0, gt=0, le=600)
    service_account: str = Field(
        "amnesia-runner", description="The training pods' identity: it reads the runs' data keys (amnesia.sealing)."
    )


class ClusterConfig(StrictModel):
    """What compiled YAML carries for a Kubernetes cluster (ignored by local runs)."""

    image: str | None = Field(None, description="REPO:TAG for every component (default: the package version).")
    s3_secret: str = Field(
        "amnesia-s3", description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3."
    )
    mlflow_secret: str = Field("amnesia-mlflow", description="Secret with MLFLOW_TRACKING_URI (+ username/password).")
    review_secret: str = Field(
        "amnesia-review-notify",
        description="Optional Secret the register step reads: AMNESIA_REVIEW_WEBHOOKS, _WEBHOOK_SECRET, _URL.",
    )
    keystore: str = Field(
        "k8s:amnesia/amnesia-data-keys",
        pattern=r"^(k8s:[a-z0-9\-]+/[a-z0-9.\-]+|file:/.+)$",
        description="Where the runs' data keys live (AMNESIA_KEYSTORE): a Secret the runner may get and patch.",
    )
    accelerator: str | None = Field(
        None, description="GPU resource for trace, unlearn and evaluate, e.g. nvidia.com/gpu; None: CPU only."
    )
    gpus: int = Field(1, ge=0, le=16, description="GPUs per compute task when an accelerator is set.")
    cpu: str = "4"
    memory: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    trainjob: TrainJobConfig | None = Field(
        None,
        description="Given: unlearn runs as a TrainJob (several nodes/GPUs) started and awaited by a light "
        "launcher task; the resources, node selector and tolerations above then apply to the TrainJob's nodes.",
    )


class RunConfig(StrictModel):
    """Top level of the run config. Stage sections are added by the stages."""

    name: str = Field("amnesia", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
    experiment: str = Field("selective-amnesia", min_length=1)
    seed: int = Field(0, ge=0)
    store: StoreConfig = StoreConfig()


def describe_error(err: ValidationError, source: str) -> str:
    """One line: '<source>: <dotted.field>: <message>' (+N more); a check across fields names its fields
    in the message itself."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {field + ': ' if field else ''}{message}{more}"


def parse_model(model: type[M], data: Any, source: str) -> M:
    """Validate `data` as `model`, turning errors into a ConfigError that names source and field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_error(err, source)) from None


# Keys whose values name data or models: a relative path there means "next to the config file".
PATH_KEYS = frozenset({"uri", "model", "corpus", "requests", "forget", "retain", "mia_members", "mia_nonmembers",
                       "root"})  # fmt: skip


def resolve_paths(data: Any, folder: Path) -> Any:
    """Relative paths under PATH_KEYS made absolute against the config's folder, when that path exists
    there: `forget: data/forget.jsonl` works from any working directory. Anything else (s3:// URIs, hub
    ids such as `cais/mmlu`, names) is left as written."""
    if isinstance(data, list):
        return [resolve_paths(v, folder) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if (
            key in PATH_KEYS
            and isinstance(value, str)
            and value
            and "://" not in value
            and not Path(value).is_absolute()
        ):
            candidate = folder / value
            out[key] = str(candidate.resolve()) if candidate.exists() else value
        else:
            out[key] = resolve_paths(value, folder)
    return out


def load_yaml(path: str | Path) -> Any:
    """A YAML config file, its relative data and model paths resolved against its own folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    return resolve_paths(data, p.resolve().parent)


def load_run_config(path: str | Path, model: type[M] = RunConfig) -> M:  # type: ignore[assignment]
    """Read and validate a YAML run config."""
    return parse_model(model, load_yaml(path), str(path))


def config_hash(cfg: BaseModel) -> str:
    """A stable sha256 of a config's canonical JSON: the same settings always hash the same."""
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
