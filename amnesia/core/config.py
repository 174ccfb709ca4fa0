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

from amnesia.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    """The model and where it runs: one section that trace, unlearn and evaluate all honour.

    In a run config it can be a plain string (the URI) or a mapping. Resolved once per stage by
    amnesia.storage.models.placement and recorded in lineage."""

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
    cpu_threads: int | None = Field(
        2,
        ge=1,
        description="torch's CPU threads, fixed: on a CPU the thread count splits every sum differently, so the "
        "same inputs give other weights and scores under another count (a machine's core count must not "
        "decide a verdict). Under torchrun each rank gets its share. None: torch's default (all cores).",
    )
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


class HistoryConfig(StrictModel):
    """Runs over time: where each run starts, and how the standing obligations (every request an approved
    version fulfilled) are checked on later candidates."""

    start: Literal["auto", "incremental", "cumulative", "original"] = Field(
        "auto",
        description="incremental: unlearn this run's requests from the current champion; cumulative: from the "
        "original model, every request ever fulfilled plus the new ones; original: from the original model, "
        "the new requests only (the obligations gate catches what that brings back); auto: incremental once "
        "the model has a champion, else original.",
    )
    sample: int | None = Field(
        50, ge=1, description="Check at most this many earlier requests per run (each person's items whole); None: all."
    )
    full_every: int = Field(6, ge=1, description="Every this many approved versions, check every obligation.")
    retention_days: int | None = Field(
        None,
        ge=0,
        description="An obligation ends this many days after fulfilment: its key is destroyed and its checks stop "
        "(recorded). None: it stands until ended by hand (`amnesia obligations end`).",
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


def read_text(path: Path, what: str = "file") -> str:
    """A user's text file as UTF-8; a missing file, a folder or a bad byte is one line naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (save it as UTF-8)") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file (a mapping of sections), its relative data and model paths resolved against its
    own folder."""
    p = Path(path)
    text = read_text(p, "config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (model:, split:, …), not a {_kind(data)}")
    return resolve_paths(data, p.resolve().parent)


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "value")


def load_run_config(path: str | Path, model: type[M] = RunConfig) -> M:  # type: ignore[assignment]
    """Read and validate a YAML run config."""
    return parse_model(model, load_yaml(path), str(path))


def config_hash(cfg: BaseModel) -> str:
    """A stable sha256 of a config's canonical JSON: the same settings always hash the same."""
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
